"""MFU of the training step on one accelerator, without Ray: `python bench/gpu_check.py` from the repo root.

Builds a Llama of an llmray preset (default "1b") with random weights, feeds random tokens at
`--seq` (default 2048) and runs the SAME `llmray.train.step.train_step` the Ray Train loop runs
(fp32 master weights, bf16 autocast on GPU, AdamW, clipping): `--warmup` untimed steps (compile,
allocator), then `--steps` timed steps. Reports tokens/s and MFU = tokens/s x flops/token
(6N + 12·L·d·S, llmray.train.flops) / peak bf16 FLOP/s (989e12 for H100/H200; `--peak-tflops`).

Robust by design: a CUDA out-of-memory error retries with half the micro-batch; a failing
torch.compile retries eagerly; a `--budget-s` deadline trims the timed steps. Needs only torch and
transformers (no Ray; pydantic optional) and the repo checkout on sys.path. Prints one JSON
object and writes it to $OUT/gpu_check.json when $OUT is set.

CPU smoke test:  python bench/gpu_check.py --preset tiny --steps 2 --device cpu
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def presets() -> dict:
    """llmray.models.PRESETS; parsed from the source when pydantic (needed to import it) is missing."""
    try:
        from llmray.models import PRESETS

        return PRESETS
    except ImportError:
        return presets_from_source()


def presets_from_source() -> dict:
    """PRESETS = {"name": dict(key=literal, ...), ...} read from llmray/models.py without importing it."""
    tree = ast.parse((ROOT / "llmray" / "models.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PRESETS":
            return {ast.literal_eval(k): {kw.arg: ast.literal_eval(kw.value) for kw in v.keywords}
                    for k, v in zip(node.value.keys, node.value.values)}
    raise RuntimeError("PRESETS not found in llmray/models.py")


def build_model(args, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = presets()[args.preset]
    cfg = LlamaConfig(vocab_size=args.vocab, tie_word_embeddings=True, attn_implementation="sdpa",
                      bos_token_id=0, eos_token_id=1, pad_token_id=2, **arch)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def attempt(args, compute, micro_batch: int, compile_model: bool) -> dict:
    """Build, warm up and time; returns the measurement (raises on OOM / compile errors)."""
    import torch

    from llmray.train.flops import flops_per_token, peak_flops
    from llmray.train.optim import build_optimizer, build_scheduler
    from llmray.train.step import causal_lm_loss, train_step

    torch.manual_seed(0)
    model = build_model(args, compute.device)
    if compile_model:
        model.compile()
    hp = SimpleNamespace(lr=3e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, steps=10_000,
                         warmup_steps=10, min_lr_ratio=0.1)
    optimizer = build_optimizer(model, hp)
    scheduler = build_scheduler(optimizer, hp)
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = [{"input_ids": torch.randint(0, args.vocab, (micro_batch, args.seq), generator=gen)}
               for _ in range(4)]
    if compute.is_cuda:
        for b in batches:
            b["input_ids"] = b["input_ids"].pin_memory()

    def step(i):
        return train_step(model, [batches[i % len(batches)]], optimizer, scheduler, causal_lm_loss, compute, 1.0,
                          args.attention)

    t_start = time.perf_counter()
    for i in range(args.warmup):
        float(step(i)["loss"])  # sync
    warm_s = time.perf_counter() - t_start
    per_step_est = warm_s / max(args.warmup, 1)
    steps = args.steps
    left = args.deadline - time.time()
    if per_step_est * steps > left * 0.8:  # keep inside the budget
        steps = max(1, int(left * 0.8 / max(per_step_est, 1e-6)))
    _sync(compute)
    t0 = time.perf_counter()
    losses = [step(args.warmup + i)["loss"] for i in range(steps)]
    _sync(compute)
    elapsed = time.perf_counter() - t0
    tokens = steps * micro_batch * args.seq
    tps = tokens / elapsed
    fpt = flops_per_token(model, args.seq)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(compute.device)
    out = {
        "preset": args.preset, "params": sum(p.numel() for p in model.parameters()), "vocab": args.vocab,
        "seq_len": args.seq, "micro_batch": micro_batch, "compile": compile_model, "attention": args.attention,
        "activation_checkpointing": args.activation_checkpointing, "warmup_steps": args.warmup,
        "timed_steps": steps, "warmup_s": round(warm_s, 2), "step_time_s": elapsed / steps,
        "tokens_per_s": tps, "flops_per_token": fpt, "achieved_tflops": tps * fpt / 1e12,
        "peak_tflops": peak / 1e12 if peak else None, "mfu": tps * fpt / peak if peak else None,
        "losses": [round(float(x), 4) for x in losses],
    }
    if compute.is_cuda:
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _sync(compute):
    import torch

    if compute.is_cuda:
        torch.cuda.synchronize()


def _free():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _measure(args, compute) -> tuple[dict | None, list[dict]]:
    """One kernel: the first micro-batch that fits (halved on OOM), compiled unless compile fails."""
    import torch

    use_compile = args.compile == "on" or (args.compile == "auto" and compute.is_cuda)
    tried, mb = [], args.micro_batch
    while mb >= 1 and time.time() < args.deadline:
        try:
            return attempt(args, compute, mb, use_compile), tried
        except torch.OutOfMemoryError:
            tried.append({"attention": args.attention, "micro_batch": mb, "error": "out of memory"})
            mb //= 2
        except Exception as e:  # a compile failure must not lose the measurement
            if not use_compile:
                tried.append({"attention": args.attention, "micro_batch": mb, "compile": False,
                              "error": f"{type(e).__name__}: {e}"[:500]})
                return None, tried
            tried.append({"attention": args.attention, "micro_batch": mb, "compile": True,
                          "error": f"{type(e).__name__}: {e}"[:500]})
            use_compile = False
        finally:
            _free()
    return None, tried


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="1b")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--micro-batch", type=int, default=16, help="first micro-batch tried (halved on OOM)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--budget-s", type=float, default=270, help="stop retrying / trim steps past this "
                                                                   "(split evenly across --attention kernels)")
    p.add_argument("--attention", default="auto",
                   help="SDPA kernel(s) of the training step, comma-separated to compare in one run: "
                        "auto,cudnn,flash,efficient,math (llmray.device.attention_kernel)")
    args = p.parse_args(argv)
    kernels = args.attention.split(",")
    share = args.budget_s / len(kernels)

    import torch

    from llmray.device import Compute, compute_init

    compute = compute_init(in_ray_train=False)
    if args.device == "cpu" and compute.is_cuda:
        compute = Compute(device=torch.device("cpu"), dtype=None, is_cuda=False)
    if args.device == "cuda" and not compute.is_cuda:
        raise SystemExit("--device cuda but torch sees no CUDA device")
    env = {"device": torch.cuda.get_device_name(0) if compute.is_cuda else "cpu", "torch": torch.__version__,
           "transformers": __import__("transformers").__version__}
    runs, tried = [], []
    for kernel in kernels:
        args.attention, args.deadline = kernel, time.time() + share
        result, failed = _measure(args, compute)
        tried += failed
        if result:
            runs.append(result)
    best = max(runs, key=lambda r: r.get("mfu") or r["tokens_per_s"], default=None)
    if len(kernels) > 1:
        env["runs"] = [{k: r.get(k) for k in ("attention", "micro_batch", "compile", "tokens_per_s", "mfu")}
                       for r in runs]
    result = best
    report = {**env, **(result or {"error": "no configuration ran"}), "attempts_failed": tried}
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "gpu_check.json").write_text(text)
    return report


if __name__ == "__main__":
    main()
