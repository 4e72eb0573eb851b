"""GRPO end to end: TRL's `GRPOTrainer` against llmray's `grpo` stage (transformers engine), one run.

The same work for both: one random tiny Llama policy and one random tiny reward model
(`llmray.testing.tiny_model_dir`, one tokenizer), the same `--prompts` chat prompts (the built-in
RL prompts, 80 by default), `--iterations` optimizer steps of `--samples` completions each (8 prompts
x 4 per group = 32), at most `--max-new-tokens` sampled tokens (random tiny models rarely stop
early), temperature 1, one PPO epoch, one optimizer step per batch, the same fixed beta (no adaptive
KL), the same learning rate. TRL: `GRPOTrainer` in this process on CPU (no eval, no saving, no logging
integrations). llmray: `llmray.stages.grpo.run` on a local Ray with its held-out evaluations of the
init and final policies (4 held-out prompts, part of its work) and the saved model; `--sides` picks
its role placements (`LLMRAY_SIDES`: the defaults, separate actors, shared actors).

Reported per side: end-to-end seconds (model load to trained model, TRL's trainer construction
included; llmray's Ray start-up excluded — a pipeline starts Ray once for all its stages), end-to-end
samples/s = trained samples / wall, and per-iteration samples/s (median over iterations 1.., iteration 0
is warm-up; TRL: a callback timing each optimizer step). llmray's fixed cost comes from its manifest
metrics (`fixed_cost`). Prints one JSON object (written to $OUT/bench_grpo_trl.json when OUT is set):

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_grpo_trl.py [--sides trl,llmray,llmray-separate]
        [--repeats 1] [--preload torch,transformers.modeling_utils,...]

With `--preload`, the local Ray's prestarted idle workers import those modules before the clocks and
the first role actors (one per CPU; no per-actor runtime env, llmray.rlhf.actors) start in them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def make_models(root: Path) -> tuple[Path, Path]:
    from llmray.testing import tiny_model_dir, tiny_tokenizer

    tiny_tokenizer(root / "tok", vocab_size=2048)
    causal = tiny_model_dir(root / "policy", "causal", tokenizer_dir=root / "tok")
    reward = tiny_model_dir(root / "reward", "reward", tokenizer_dir=root / "tok")
    return causal, reward


def prompt_texts(n: int) -> list[str]:
    from llmray.data.instruct import rl_prompts

    rows = rl_prompts()
    texts = [r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"] for r in rows]
    return (texts * (n // max(1, len(texts)) + 1))[:n]


def run_trl(policy: Path, reward: Path, prompts: list[str], a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    steps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            steps.append(time.perf_counter() - self.t)

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(policy))
    rm = AutoModelForSequenceClassification.from_pretrained(str(reward), num_labels=1)
    rm_tok = AutoTokenizer.from_pretrained(str(reward))
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    cfg = GRPOConfig(
        output_dir=str(a.work / "trl"), per_device_train_batch_size=a.samples, num_generations=a.group,
        max_completion_length=a.max_new_tokens, max_steps=a.iterations, learning_rate=a.lr, beta=a.beta,
        num_iterations=1, temperature=1.0, top_k=0, use_cpu=True, bf16=False, save_strategy="no",
        report_to="none", logging_steps=1, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=str(policy), reward_funcs=rm, args=cfg, train_dataset=ds, processing_class=tok,
                          reward_processing_classes=rm_tok, callbacks=[StepTimer()])
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    n = a.iterations * a.samples
    per_it = [a.samples / s for s in steps[1:]] or [a.samples / steps[0]]
    return {"wall_s": round(t2 - t0, 2), "setup_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2),
            "samples": n, "samples_per_s": round(n / (t2 - t0), 2),
            "iteration_samples_per_s": round(statistics.median(per_it), 2),
            "iteration_samples_per_s_range": [round(min(per_it), 1), round(max(per_it), 1)]}


# llmray sides: the `resources:` block each runs with (defaults: on this local Ray, the roles in this process)
LLMRAY_SIDES = {"llmray": {}, "llmray-separate": {"colocate": False},
                "llmray-colocate": {"colocate": True, "in_process": False}}


def run_llmray(policy: Path, reward: Path, prompts: list[str], a, tag: str, resources: dict) -> dict:
    from llmray.stages import get_stage, grpo
    from llmray.stages.base import StageContext, StageOutput

    base = a.work / f"llmray-{tag}"
    pfile = base / "prompts.jsonl"
    pfile.parent.mkdir(parents=True, exist_ok=True)
    pfile.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    out, work = base / "out", base / "work"
    out.mkdir(parents=True, exist_ok=True)

    def stage(name, kind, d):
        return [StageOutput(name, kind, d.parent, {"outputs": {"model": d.name}, "metrics": {}})]

    log = logging.getLogger("bench.llmray")
    log.setLevel(logging.INFO)
    ctx = StageContext(name="grpo", kind="grpo", fingerprint="bench", run_dir=base, out_dir=out, work_dir=work,
                       inputs={"init": stage("sft", "sft", policy), "reward": stage("rm", "reward", reward)},
                       pipeline=None, log=log)
    cfg = get_stage("grpo").Config.model_validate({
        "kind": "grpo", "init": "sft", "reward": "rm", "prompts": str(pfile), "eval_fraction": 0.05, "num_eval": 4,
        "iterations": a.iterations, "batch_size": a.samples // a.group, "group_size": a.group,
        "generation": {"max_new_tokens": a.max_new_tokens},
        "optim": {"lr": a.lr, "epochs": 1, "minibatch_size": a.samples, "micro_batch_size": a.samples},
        "kl": {"coef": a.beta, "adaptive": False}, "rollout": {"engine": "hf"}, "resources": resources,
        "checkpoint_every": a.iterations + 1})
    t0 = time.perf_counter()
    m = grpo.run(cfg, ctx).metrics
    t1 = time.perf_counter()
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_it = [r["samples"] / r["time_iteration_s"] for r in recs[1:]] or [recs[0]["samples"] / recs[0]["time_iteration_s"]]
    n = m["samples_trained"]
    return {"wall_s": round(t1 - t0, 2), "samples": n, "samples_per_s": round(n / (t1 - t0), 2),
            "iteration_samples_per_s": round(statistics.median(per_it), 2),
            "iteration_samples_per_s_range": [round(min(per_it), 1), round(max(per_it), 1)],
            "fixed_cost": m.get("fixed_cost"), "roles": m.get("roles"), "reward_mean_last": m["reward_mean_last"]}


def wait_idle_workers(timeout: float = 90.0) -> int:
    """Wait (before any clock) until the local Ray's prestarted idle workers (one per CPU) are up, with
    their preloaded modules: a pipeline starts Ray once and its earlier stages give them the time."""
    import psutil
    import ray

    raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
    want, deadline, n = int(ray.cluster_resources().get("CPU", 1)), time.time() + timeout, 0
    while time.time() < deadline:
        n = sum("ray::IDLE" in " ".join(p.cmdline()) for p in raylet.children())  # Ray's title once registered
        if n >= want:
            break
        time.sleep(0.5)
    busy = 1.0
    while busy > 0.05 and time.time() < deadline:  # preloading registers first, then imports: wait for quiet
        procs = raylet.children()
        t = sum(sum(p.cpu_times()[:2]) for p in procs)
        time.sleep(1.0)
        busy = sum(sum(p.cpu_times()[:2]) for p in procs) - t
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="trl,llmray,llmray-separate",
                    help="llmray: the defaults (resources.colocate/in_process auto: here the roles run in this "
                         "process); llmray-separate: colocate false (every role its own actor, the default before); "
                         "llmray-colocate: colocate true, in_process false (shared actors)")
    ap.add_argument("--repeats", type=int, default=1, help="Alternating runs of each side (best reported).")
    ap.add_argument("--prompts", type=int, default=80)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--samples", type=int, default=32, help="Completions per iteration.")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--preload", default="", help="RAY_preload_python_modules for the local Ray, e.g. "
                    "torch,transformers.modeling_utils: its prestarted idle workers import them before the clocks")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sides = a.sides.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        a.work = Path(tmp)
        policy, reward = make_models(a.work / "models")
        prompts = prompt_texts(a.prompts)
        if "llmray" in a.sides:
            from llmray.rayutil import init_ray

            if a.preload:  # Ray's own switch, read by the raylet this process starts (llmray.rayutil)
                os.environ["RAY_preload_python_modules"] = a.preload
            init_ray(None)
            print("idle workers", wait_idle_workers(), flush=True)
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for r in range(a.repeats):
            for s in sides:
                if s == "trl":
                    res = run_trl(policy, reward, prompts, a)
                else:
                    res = run_llmray(policy, reward, prompts, a, f"{s}{r}", LLMRAY_SIDES[s])
                print(s, json.dumps(res), flush=True)
                runs[s].append(res)
    best = {s: max(rs, key=lambda x: x["samples_per_s"]) for s, rs in runs.items()}
    out = {"work": {k: getattr(a, k) for k in ("prompts", "iterations", "samples", "group", "max_new_tokens", "beta")},
           "cpus": os.cpu_count(), "runs": runs, "best": best}
    for s in [s for s in best if s.startswith("llmray") and "trl" in best]:
        out[f"{s}/trl"] = {"end_to_end": round(best[s]["samples_per_s"] / best["trl"]["samples_per_s"], 3),
                           "per_iteration": round(best[s]["iteration_samples_per_s"]
                                                  / best["trl"]["iteration_samples_per_s"], 3)}
    print(json.dumps(out, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_grpo_trl.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
