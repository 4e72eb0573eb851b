"""Ray Train loop overhead: tokens/s of `llmray.train.loop.fit` (1 worker) ÷ a bare torch loop, same everything.

Both sides build the model with the same task code and seed, read the same token shards in the
same order, use the same micro-batch, optimizer, schedule and torch thread count, and call the
same `llmray.train.step.train_step`. What differs is only what Ray adds: the TorchTrainer worker
process, Ray Data streaming the shard to the worker, metrics records, the step-0/final
evaluations (excluded from the timing on both sides, as the loop pauses its clock for them).
Steady state: the first `--warmup-steps` are not timed on either side. The bare loop runs
before and after the Ray run and its mean is the reference (the machine may be shared).

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_train.py [--preset tiny --seq 128 ...]

Prints a JSON object (ratio = ray / bare; goal >= 0.97); writes it to $OUT/bench_train.json if set.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def make_data(root: Path, seq: int, docs: int) -> Path:
    from test_pretrain_support import stdlib_corpus, write_token_shards

    from llmray.testing import tiny_tokenizer

    tiny_tokenizer(root / "tok")
    write_token_shards(stdlib_corpus(docs), root / "tok", root / "data", seq_len=seq)
    return root / "data"


def _task(data: Path, preset: str, min_rows: int = 0):
    from llmray.train.causal import CausalLMTask

    return CausalLMTask(train_dir=data / "train", val_dir=data / "val", tokenizer_dir=data / "tokenizer",
                        model={"preset": preset}, min_rows=min_rows)


def bare_loop(data: Path, args, cfg) -> list[float]:
    """Single process, no Ray: rows from the shards in file order, the same train_step.
    Returns tokens/s of each `log_every`-step interval after warmup (what the Ray loop logs)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from llmray.device import compute_init
    from llmray.train.loop import seed_all
    from llmray.train.optim import build_optimizer, build_scheduler
    from llmray.train.step import causal_lm_loss, train_step

    torch.set_num_threads(args.threads)
    rows = np.concatenate([np.stack(pq.read_table(f).column("input_ids").to_numpy(zero_copy_only=False))
                           for f in sorted((data / "train").glob("*.parquet"))]).astype(np.int64)
    mb = args.micro_batch
    batches = [{"input_ids": torch.from_numpy(rows[i:i + mb])} for i in range(0, len(rows) - mb + 1, mb)]
    compute = compute_init(in_ray_train=False)
    seed_all(cfg.seed)
    task = _task(data, args.preset)
    model = task.build_model().to(compute.device).train()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    rates, t0 = [], None
    for step in range(cfg.steps):
        if step >= args.warmup_steps and (step - args.warmup_steps) % cfg.log_every == 0:
            if t0 is not None:
                rates.append(cfg.log_every * mb * args.seq / (time.perf_counter() - t0))
            t0 = time.perf_counter()
        train_step(model, [batches[step % len(batches)]], optimizer, scheduler, causal_lm_loss, compute,
                   cfg.grad_clip)
    rates.append(cfg.log_every * mb * args.seq / (time.perf_counter() - t0))
    return rates


def ray_loop(data: Path, args, cfg, work: Path) -> tuple[list[float], dict]:
    """fit() with one worker; tokens/s of each logged interval after warmup, from metrics.jsonl."""
    from llmray.resources import Resources
    from llmray.stages.base import StageContext
    from llmray.train.data import rows_needed
    from llmray.train.loop import fit

    out = work / "out"
    out.mkdir(parents=True)
    ctx = StageContext(name="bench", kind="pretrain", fingerprint="bench", run_dir=work, out_dir=out,
                       work_dir=work / "work", inputs={}, pipeline=None, log=logging.getLogger("bench"))
    task = _task(data, args.preset, rows_needed(cfg, 1))
    res = fit(task, cfg, Resources(num_workers=1, cpus_per_worker=args.threads), ctx)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in recs if "step_time_s" in r and r["step"] > args.warmup_steps]
    data_wait = sum(r["data_wait"] * r["step_time_s"] for r in timed) / sum(r["step_time_s"] for r in timed)
    return [r["tokens_per_s"] for r in timed], {**res.metrics, "data_wait": data_wait}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=110)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--interval", type=int, default=10, help="steps per timed interval (divides warmup-steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (= the Ray worker's CPUs)")
    p.add_argument("--docs", type=int, default=1500, help="documents of the built-in corpus to tokenize")
    args = p.parse_args(argv)

    import ray

    from llmray.config import RayConfig
    from llmray.rayutil import init_ray
    from llmray.train.config import TrainConfig

    cfg = TrainConfig(steps=args.steps, micro_batch_size=args.micro_batch, warmup_steps=args.warmup_steps,
                      log_every=args.interval, eval_every=args.steps, checkpoint_every=args.steps,
                      eval_batches=1, lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), args.seq, args.docs)
        bare_before = bare_loop(data, args, cfg)
        init_ray(RayConfig(num_cpus=2, object_store_mb=512))
        ray_rates, final = ray_loop(data, args, cfg, Path(tmp) / "ray")
        ray.shutdown()
        bare_after = bare_loop(data, args, cfg)
    bare = bare_before + bare_after
    # The machine may be shared: per-interval rates, compared by median (typical) and max (least
    # disturbed); bare intervals come from runs before and after the Ray run.
    report = {"preset": args.preset, "seq_len": args.seq, "micro_batch": args.micro_batch,
              "timed_steps": args.steps - args.warmup_steps, "interval_steps": cfg.log_every,
              "threads": args.threads,
              "bare_tokens_per_s_median": round(statistics.median(bare), 1),
              "ray_train_tokens_per_s_median": round(statistics.median(ray_rates), 1),
              "ratio": round(statistics.median(ray_rates) / statistics.median(bare), 4),
              "ratio_best_interval": round(max(ray_rates) / max(bare), 4),
              "bare_intervals": [round(x) for x in bare], "ray_intervals": [round(x) for x in ray_rates],
              "ray_data_wait_share": round(final["data_wait"], 4), "worker_torch_threads": final.get("torch_threads"),
              "goal": 0.97}
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "bench_train.json").write_text(text)
    return report


if __name__ == "__main__":
    main()
