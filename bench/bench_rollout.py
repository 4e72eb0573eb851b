"""Rollout throughput, vLLM vs transformers `generate`, and the PPO step time split.

Part 1, `rollout` (no Ray): the same policy folder, the same chat-templated prompts (the
built-in RL prompts' test split) and the same sampling settings through
`llmray.rlhf.rollout.VLLMEngine` and `HFEngine` in this process; every sample is forced to
`--max-new-tokens` (min = max) so both engines generate the same number of tokens; one warm-up
call, then `--repeats` timed calls; tokens/s = generated tokens / wall time (median reported).
Part 2, `step` (`--steps N`, no Ray): the PPO step of the actors' code run in one process,
phase by phase: generate (engine) / score (reward model, reference and policy log-probs,
critic values) / train (policy and critic epochs) / sync (export bytes, engine reload).
Part 3, `ppo` (`--ppo-iterations N`, needs Ray): a real `ppo` stage run with each engine; the
mean seconds per iteration by phase from its metrics.jsonl (iteration 0 left out: warm-up).

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_rollout.py [--model DIR --reward DIR]
        [--prompts 64] [--max-new-tokens 64] [--engines vllm,hf] [--steps 4] [--ppo-iterations 4]

Without --model, random tiny Llama policy and reward models are made. Parts 1-2 import
neither Ray nor pydantic (they run on a bare GPU machine with torch + transformers). Prints
one JSON object; writes it to $OUT/bench_rollout.json when OUT is set.
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
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# The rollout/optim defaults of llmray.rlhf.config, spelled out so parts 1-2 need no pydantic.
OPTIM = {"lr": 2e-5, "critic_lr": 1e-4, "weight_decay": 0.0, "max_grad_norm": 1.0, "epochs": 2,
         "minibatch_size": 16, "micro_batch_size": 16, "clip": 0.2, "entropy_coef": 0.0}


def make_models(root: Path) -> tuple[Path, Path]:
    from llmray.testing import tiny_model_dir, tiny_tokenizer

    tiny_tokenizer(root / "tok", vocab_size=2048)
    causal = tiny_model_dir(root / "policy", "causal", tokenizer_dir=root / "tok")
    reward = tiny_model_dir(root / "reward", "reward", tokenizer_dir=root / "tok")
    return causal, reward


def load_prompts(model_dir: Path, n: int):
    from transformers import AutoTokenizer

    from llmray.chat import stop_token_ids
    from llmray.data.instruct import rl_prompts

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    recs = rl_prompts("test")[:n]
    ids = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
           for r in recs]
    return recs, ids, stop_token_ids(tok), tok.pad_token_id


def make_engine(kind: str, model_dir: Path, args, tmp: Path):
    from llmray.rlhf.rollout import EngineOptions, HFEngine, VLLMEngine

    opts = EngineOptions(max_model_len=256 + args.max_new_tokens, gpu_memory_utilization=0.4,
                         hf_batch_size=args.prompts)
    t0 = time.perf_counter()
    engine = (VLLMEngine if kind == "vllm" else HFEngine)(str(model_dir), opts, 0, str(tmp / kind))
    return engine, time.perf_counter() - t0


def bench_rollout(kind: str, model_dir: Path, data, args, tmp: Path) -> dict:
    _, prompts, stop, _ = data
    engine, start_s = make_engine(kind, model_dir, args, tmp)
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens,
                "min_new_tokens": args.max_new_tokens, "stop_ids": stop}
    engine.generate(prompts[:4], 1, sampling, seed=0)  # warm-up
    rates = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        out = engine.generate(prompts, args.n, sampling, seed=r)
        rates.append(sum(len(s["ids"]) for group in out for s in group) / (time.perf_counter() - t0))
    del engine
    return {"engine": kind, "start_s": round(start_s, 1), "tokens_per_s": round(statistics.median(rates), 1),
            "runs": [round(x, 1) for x in rates]}


def bench_step(kind: str, causal: Path, reward: Path, data, args, tmp: Path) -> dict:
    """The PPO step in one process: the same worker classes the Ray actors hold."""
    import torch

    from llmray.rlhf import algos
    from llmray.rlhf.batch import pack
    from llmray.rlhf.config import Optim
    from llmray.rlhf.trainer import ModelRole, PolicyWorker, ValueWorker

    recs, prompts, stop, pad = data
    engine, _ = make_engine(kind, causal, args, tmp)
    optim, steps = Optim(**OPTIM), (args.steps + 1) * OPTIM["epochs"]

    def role(d: Path, trainable: bool) -> ModelRole:
        return ModelRole(str(d), trainable, optim, steps, args.threads)

    policy, ref = PolicyWorker(role(causal, True)), PolicyWorker(role(causal, False))
    rm, critic = ValueWorker(role(reward, False)), ValueWorker(role(reward, True), value_clip=0.2)
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens, "stop_ids": stop}
    rows = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        resp = [s[0]["ids"] for s in engine.generate(prompts, 1, sampling, seed=step)]
        t1 = time.perf_counter()
        batch = pack(prompts, resp, pad)
        lp, rlp = policy.logprobs(batch)["logprobs"], ref.logprobs(batch)["logprobs"]
        scores, values = rm.score_responses([r["prompt"] for r in recs], resp, stop), critic.values(batch)
        t2 = time.perf_counter()
        mask = torch.tensor(batch["response_mask"])
        kl = algos.kl_per_token(torch.tensor(lp), torch.tensor(rlp))
        rewards = algos.token_rewards(torch.tensor(scores), kl, mask, 0.2)
        adv, ret = algos.gae(rewards, torch.tensor(values), mask, 1.0, 0.95)
        batch.update(old_logprobs=lp, advantages=algos.masked_whiten(adv, mask).numpy(), old_values=values,
                     returns=ret.numpy(), ref_logprobs=rlp)
        policy.train(batch, 0.0, step)
        critic.train(batch, step)
        t3 = time.perf_counter()
        engine.load_weights(policy.export_weights(), step + 1)
        t4 = time.perf_counter()
        if step:  # step 0 warms up
            rows.append({"generate_s": t1 - t0, "score_s": t2 - t1, "train_s": t3 - t2, "sync_s": t4 - t3,
                         "samples": len(resp), "response_tokens": int(mask.sum())})
    out = {k: round(statistics.mean(r[k] for r in rows), 3) for k in rows[0]}
    return {"engine": kind, "device": str(policy.compute.device), **out}


def bench_ppo(kind: str, causal: Path, reward: Path, args, tmp: Path) -> dict:
    """A real ppo stage run on Ray; mean seconds per iteration by phase (iteration 0 excluded)."""
    from llmray.rlhf.driver import run_rl
    from llmray.stages import ppo
    from llmray.stages.base import StageContext, StageOutput

    root = tmp / f"ppo-{kind}"
    (root / "out").mkdir(parents=True)
    (root / "work").mkdir(parents=True)

    def ref(name, k, d):
        return [StageOutput(name, k, d.parent, {"outputs": {"model": d.name}})]

    ctx = StageContext(name=f"bench-{kind}", kind="ppo", fingerprint="bench", run_dir=root, out_dir=root / "out",
                       work_dir=root / "work", inputs={"init": ref("sft", "sft", causal),
                                                       "reward": ref("rm", "reward", reward)},
                       pipeline=None, log=logging.getLogger("bench"))
    cfg = ppo.Config(init="sft", reward="rm", iterations=args.ppo_iterations, batch_size=args.prompts,
                     num_eval=8, checkpoint_every=1000, rollout={"engine": kind},
                     generation={"max_new_tokens": args.max_new_tokens})
    t0 = time.perf_counter()
    m = run_rl(cfg, ctx, "ppo").metrics
    recs = [json.loads(x) for x in (root / "out" / "metrics.jsonl").read_text().splitlines()][1:] or [{}]
    split = {k: round(statistics.mean(r.get(k, 0.0) for r in recs), 3) for k in
             ("time_generate_s", "time_score_s", "time_train_s", "time_sync_s", "time_iteration_s")}
    return {"engine": kind, "wall_s": round(time.perf_counter() - t0, 1), "iterations": m["iterations"],
            "samples_per_iteration": args.prompts, "logprob_mismatch_mean": m["logprob_mismatch_mean"], **split}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="policy HF folder (default: a random tiny Llama)")
    p.add_argument("--reward", help="reward-model HF folder (default: a random tiny one)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--engines", default="vllm,hf")
    p.add_argument("--steps", type=int, default=0, help="time N in-process PPO steps per engine (no Ray)")
    p.add_argument("--ppo-iterations", type=int, default=0, help="time a ppo stage run per engine (Ray)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    causal, reward = (Path(args.model), Path(args.reward) if args.reward else None) if args.model \
        else make_models(tmp)
    if (args.steps or args.ppo_iterations) and reward is None:
        sys.exit("--steps / --ppo-iterations with --model need --reward")
    engines = args.engines.split(",")
    data = load_prompts(causal, args.prompts)
    result = {"prompts": len(data[1]), "n": args.n, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
              "cuda": torch.cuda.is_available(), "rollout": [bench_rollout(k, causal, data, args, tmp) for k in engines]}
    if args.steps:
        result["step"] = [bench_step(k, causal, reward, data, args, tmp) for k in engines]
    if args.ppo_iterations:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=512 * 2**20)
        result["ppo"] = [bench_ppo(k, causal, reward, args, tmp) for k in engines]
    text = json.dumps(result, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_rollout.json").write_text(text)


if __name__ == "__main__":
    main()
