"""SFT forward+backward throughput, padded vs packed micro-batches (`sft` `packing: false` / `true`).

Both sides run the real task code on the same rows in the same micro-batches: `SftTask.collate`
(`llmray.posttrain.pad_batch` or `pack_batch`), `SftTask.loss` (sdpa attention, masked CE over
assistant tokens) and `loss.backward()`, on one randomly initialised Llama (the `small` preset's
shape by default: hidden 256, 4 layers) in fp32 on the CPU. The rows are chat-like: lengths drawn
from a lognormal whose median is max_seq_len / 4 with a long tail (rows over max_seq_len dropped,
as `prepare` quarantines them), the last two thirds of each row the assistant's reply.
Throughput counts only real (non-pad) tokens, the same on both sides. The machine may be shared, so
each batch runs `--repeats` times per mode, the modes alternating (order swapped every batch), and
its fastest run counts: tokens/s = real tokens / the sum of those per-batch minimum times. The first
`--warmup` batches are not timed. Every batch's loss must agree between the modes (same targets).

    flock /tmp/llmray-ray.lock .venv/bin/python bench/bench_sft_packing.py [--max-len 512 --micro-batch 8]

Prints a JSON object (ratio = packed / padded tokens/s; goal >= 1.8 on CPU); writes it to
$OUT/bench_sft_packing.json if OUT is set.
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
sys.path[:0] = [str(ROOT)]


def chat_lengths(n: int, max_len: int, sigma: float, seed: int, min_len: int = 16) -> list[int]:
    """`n` lognormal lengths, median max_len / 4, within [min_len, max_len] (longer draws dropped)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < n:
        draw = np.exp(rng.normal(np.log(max_len / 4), sigma, size=n)).round().astype(int)
        out += [int(x) for x in draw if min_len <= x <= max_len]
    return out[:n]


def chat_rows(lengths: list[int], vocab: int, seed: int):
    """Random token rows with a loss mask on the last two thirds (the 'assistant reply')."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for n in lengths:
        ids.append(rng.integers(3, vocab, size=n))
        m = np.zeros(n, dtype=np.int64)
        m[n // 3:] = 1
        masks.append(m)
    return ids, masks


def make_model_dir(out: Path, preset: str, layers: int, vocab: int, max_len: int) -> Path:
    """A random Llama of the preset's shape saved in HF format (what SftTask.build_model loads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmray.models import PRESETS

    arch = {**PRESETS[preset], "num_hidden_layers": layers,
            "max_position_embeddings": max(max_len, PRESETS[preset]["max_position_embeddings"])}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, pad_token_id=0, tie_word_embeddings=True,
                                 attn_implementation="sdpa", **arch)).save_pretrained(out)
    return out


def fwd_bwd(task, model, batch) -> tuple[float, float, int]:
    """(seconds, loss, real tokens) of one forward + backward on a collated batch."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss, metrics = task.loss(model, batch)
    loss.backward()
    return time.perf_counter() - t0, loss.item(), metrics["tokens"]


def run(args) -> dict:
    import numpy as np
    import torch

    from llmray.train.sft import SftTask

    torch.set_num_threads(args.threads)
    n_batches = args.warmup + args.batches
    ids, masks = chat_rows(chat_lengths(n_batches * args.micro_batch, args.max_len, args.sigma, args.seed),
                           args.vocab, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp) / "model", args.preset, args.layers, args.vocab, args.max_len)
        tasks = {p: SftTask(model_dir, "", "", pad_id=0, packing=p, max_seq_len=args.max_len)
                 for p in (False, True)}
        model = tasks[False].build_model().train()  # weights now in memory; the folder may go
    seconds = {False: 0.0, True: 0.0}
    tokens = {False: 0, True: 0}
    positions = {False: 0, True: 0}
    max_loss_diff, collate_s = 0.0, {False: 0.0, True: 0.0}
    for b in range(n_batches):
        sl = slice(b * args.micro_batch, (b + 1) * args.micro_batch)
        np_batch = {"input_ids": np.array(ids[sl], dtype=object), "loss_mask": np.array(masks[sl], dtype=object)}
        batches = {}
        for p in (False, True):
            t0 = time.perf_counter()
            batches[p] = tasks[p].collate(np_batch)
            collate_s[p] += time.perf_counter() - t0
        best, losses, real = {False: float("inf"), True: float("inf")}, {}, sum(len(x) for x in ids[sl])
        for _ in range(args.repeats):
            for packing in ((False, True) if b % 2 == 0 else (True, False)):
                dt, losses[packing], n = fwd_bwd(tasks[packing], model, batches[packing])
                assert n == real, (packing, n, real)  # the task's own count of non-pad tokens
                best[packing] = min(best[packing], dt)
        if b >= args.warmup:
            for packing in (False, True):
                seconds[packing] += best[packing]
                tokens[packing] += real
                positions[packing] += batches[packing]["input_ids"].numel()
        max_loss_diff = max(max_loss_diff, abs(losses[True] - losses[False]))
    tps = {p: tokens[p] / seconds[p] for p in (False, True)}
    lengths = [len(x) for x in ids]
    return {
        "model": f"llama {args.preset} shape, {args.layers} layers, vocab {args.vocab}, fp32, sdpa",
        "threads": args.threads, "max_seq_len": args.max_len, "micro_batch_rows": args.micro_batch,
        "timed_batches": args.batches, "repeats": args.repeats, "length_median": statistics.median(lengths),
        "length_mean": round(statistics.mean(lengths), 1), "length_p95": int(np.percentile(lengths, 95)),
        "length_max": max(lengths), "real_tokens_timed": tokens[True],
        "padded_pad_share": round(1 - tokens[False] / positions[False], 3),
        "packed_pad_share": round(1 - tokens[True] / positions[True], 3),
        "padded_tokens_per_s": round(tps[False], 1), "packed_tokens_per_s": round(tps[True], 1),
        "ratio": round(tps[True] / tps[False], 3), "max_batch_loss_diff": max_loss_diff,
        "padded_collate_ms": round(1000 * collate_s[False] / n_batches, 2),
        "packed_collate_ms": round(1000 * collate_s[True] / n_batches, 2),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", help="llmray.models PRESETS entry giving the layer shape")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--max-len", type=int, default=512, help="max_seq_len: the packed row length")
    p.add_argument("--micro-batch", type=int, default=8, help="rows per micro-batch (sft's default is 8)")
    p.add_argument("--batches", type=int, default=16, help="timed micro-batches per mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="runs per batch and mode; the fastest counts")
    p.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma of the row lengths")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    report = run(p.parse_args(argv))
    print(json.dumps(report, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_sft_packing.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
