"""Tracking overhead: training step time with experiment tracking on vs off, in one run.

The same tiny causal LM, optimizer and batches; the Ray-free `llmray.train.step.train_step`; a record
written through `MetricsWriter` every `--log-every` steps on both sides (that file is what a
training stage writes anyway). "on" writes to a metrics.jsonl that a live `llmray.tracking.Tracker`
(embedded MLflow store + TensorBoard) tails and forwards, as `llmray run` does: the tracker in
another process (under `llmray run` it lives in the driver, training in Ray workers), then in the
training process itself (the worst case). Blocks of steps alternate off/on (ABAB...) so a shared
machine's drift hits both sides; the first block of each side is a warm-up and not counted.

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_tracking.py [--steps-per-block 40 --blocks 6]

Prints a JSON object: per phase, the median block's step time off / on and overhead = on / off - 1 (goal <= 2%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(seq: int, batch: int, hidden: int, layers: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    data = [{"input_ids": torch.randint(0, 1024, (batch, seq))} for _ in range(8)]
    return model, opt, sched, data


def block(model, opt, sched, data, steps: int, writer, log_every: int, start: int) -> float:
    """Run `steps` optimizer steps; returns the mean wall time per step (record writing included)."""
    from llmray.device import compute_init
    from llmray.train.step import causal_lm_loss, train_step

    compute = compute_init(in_ray_train=False)
    t0 = time.perf_counter()
    for i in range(steps):
        step = start + i + 1
        stats = train_step(model, [data[step % len(data)]], opt, sched, causal_lm_loss, compute, 1.0, "auto")
        if step % log_every == 0:
            writer.write({"step": step, **{k: float(v) for k, v in stats.items() if hasattr(v, "__float__")},
                          "lr": sched.get_last_lr()[0], "tokens_per_s": 1.0})
    return (time.perf_counter() - t0) / steps


def tracker_side(workdir: str, total: int, ready, stop) -> None:
    """A Tracker following stage `base` whose records land in <run>/.staging/base/metrics.jsonl."""
    from llmray.pipeline import load_pipeline
    from llmray.tracking import Tracker

    pipe = load_pipeline(ROOT / "tests" / "support" / "pipelines" / "tiny.yaml", [f"workdir={workdir}", "tracking.tensorboard=true"])
    root = Path(workdir) / pipe.name
    root.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(pipe, root, echo=lambda m: print(m, file=sys.stderr))
    tracker.pipeline_started()
    tracker.stage_started("base", pipe.stages["base"], "bench", {}, [root / ".staging" / "base" / "metrics.jsonl"], total)
    ready.set()
    stop.wait()
    tracker.stage_finished("base", {"status": "completed", "metrics": {}}, [])
    tracker.pipeline_finished("completed", [])


def phase(args, where: str) -> dict:
    """ABAB blocks, tracking off/on; the tracker in another process (as under `llmray run`) or in this one."""
    import multiprocessing as mp
    import threading

    from mlflow import MlflowClient

    from llmray.stages.base import MetricsWriter

    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    total = args.steps_per_block * args.blocks
    if where == "process":
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        side = ctx.Process(target=tracker_side, args=(str(tmp), total, ready, stop))
    else:
        ready, stop = threading.Event(), threading.Event()
        side = threading.Thread(target=tracker_side, args=(str(tmp), total, ready, stop))
    side.start()
    ready.wait(300)
    model, opt, sched, data = build(args.seq, args.batch, args.hidden, args.layers)
    writers = {"off": MetricsWriter(tmp / "off" / "metrics.jsonl"),
               "on": MetricsWriter(tmp / "tiny" / ".staging" / "base" / "metrics.jsonl")}
    times: dict[str, list[float]] = {"off": [], "on": []}
    step = 0
    for _ in range(args.blocks):
        for name in ("off", "on"):
            times[name].append(block(model, opt, sched, data, args.steps_per_block, writers[name], args.log_every, step))
            step += args.steps_per_block
    stop.set()
    side.join()
    run_id = json.loads((tmp / "tiny" / "tracking.json").read_text())["stages"]["base"]["mlflow"]["run_id"]
    logged = len(MlflowClient(f"sqlite:///{tmp / 'tiny' / 'mlflow.db'}").get_metric_history(run_id, "loss"))
    # Median over blocks: a shared machine's occasional stall lands in one block, not in the figure.
    off, on = statistics.median(times["off"][1:]), statistics.median(times["on"][1:])
    return {"tracker_in": where, "records_written": step // 2 // args.log_every, "records_in_mlflow": logged,
            "step_s_off": round(off, 5), "step_s_on": round(on, 5), "overhead": round(on / off - 1, 4),
            "blocks_off": [round(t, 4) for t in times["off"]], "blocks_on": [round(t, 4) for t in times["on"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-per-block", type=int, default=40)
    ap.add_argument("--blocks", type=int, default=6, help="blocks per side (the first is a warm-up)")
    ap.add_argument("--log-every", type=int, default=1, help="a record every N steps (1: the worst case)")
    ap.add_argument("--where", default="process,thread",
                    help="process: the tracker in another process, as `llmray run` has it (training runs in "
                         "Ray workers); thread: in the training process itself (the worst case)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    result = {"model": f"llama h{args.hidden} l{args.layers} seq{args.seq} batch{args.batch}, 1 torch thread, CPU",
              "steps_per_block": args.steps_per_block, "blocks_counted": args.blocks - 1,
              "log_every": args.log_every, "backends": ["mlflow (embedded sqlite)", "tensorboard"],
              "phases": [phase(args, w) for w in args.where.split(",")]}
    print(json.dumps(result, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_tracking.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
