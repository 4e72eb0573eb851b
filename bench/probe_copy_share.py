"""Does a share of copy rows in base pretraining teach the quickstart model to copy (induction)?

Why: the quickstart's answers to held-out "what does this function do" questions have the reference's
form but name another API; with the question's name put in, their word F1 would be ~0.34 instead of
~0.10 (bench/README.md, "The quickstart from scratch with session 18"). Copying a name from the
prompt needs induction, which a throw-away probe saw form only after 1,500-2,000 steps of a pure copy
task. This probe asks whether a share of copy rows inside the quickstart's own pretraining budget does it.

It trains `base` as the quickstart does (tiny preset, `--steps` steps of 2 micro-batches of 16 rows of
the run's `tokens` shards, AdamW lr 3e-3, 20 warm-up steps, cosine; `llmray.train.step.train_step`, no
Ray; the rows in one seeded random order, or with `--order corpus` in the shards' order as `pretrain`
reads them, which reproduces the quickstart's `base` exactly), with a `--share` of the rows replaced by
copy rows: random token spans of 8-24, each followed by its repeat, loss on the repeats only. Every
`--every` steps it prints one JSON line:

- `val_loss`: next-token loss on the first 64 rows of the run's `tokens/val` (what the copy rows cost);
- `copy_loss`: loss on the repeats of 16 held-out copy rows (ln(vocab) = no copying; ~0 = copying);
- `name_copy`: on the 64 held-out API names of the align stage's answer set, given "The function
  `<name>` is documented below.\\n\\n`" and the name's first piece again, the share of the name's other
  pieces the model predicts (teacher-forced argmax): copying a name from earlier in the context.

    .venv/bin/python bench/probe_copy_share.py runs/quickstart --share 0.25 --steps 300
    .venv/bin/python bench/probe_copy_share.py runs/quickstart --share 1 --length 48 --steps 1000 \
        --init runs/quickstart/base/model      # a pure copy phase of short rows after `base`

Two torch threads (the quickstart's in-process training); ~1.5 s a step of 256-token rows on 2 cores.
Results: bench/README.md, "A copy-task share inside the quickstart's budget does not teach copying" and
"Pretraining reads its rows in corpus order".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

SPAN = (8, 24)


def copy_row(rng, vocab: int, length: int, low: int = 3) -> tuple[list[int], list[int]]:
    """(ids, labels): random spans each followed by its repeat, cut to `length`; labels -100 on the
    first copy (unpredictable), the token on the repeat. Ids below `low` (special tokens) are not used."""
    ids: list[int] = []
    labels: list[int] = []
    while len(ids) < length:
        span = rng.integers(low, vocab, int(rng.integers(SPAN[0], SPAN[1] + 1))).tolist()
        ids += span + span
        labels += [-100] * len(span) + span
    return ids[:length], labels[:length]


def training_rows(rows, order, share: float, rng, vocab: int, length: int):
    """Endless (ids, labels): the run's rows in `order`, repeated epoch after epoch, each replaced by a
    copy row with probability `share` (labels = ids for a corpus row: next-token loss on every token)."""
    pos = 0
    while True:
        if rng.random() < share:
            yield copy_row(rng, vocab, length)
        else:
            row = rows[order[pos % len(rows)]].tolist()
            pos += 1
            yield row, row


def name_rows(tokenizer) -> list[tuple[list[int], int]]:
    """(ids, where the repeated name starts) per held-out API name of the align stage's answer set."""
    from llmray.safety.answers import question_set

    out = []
    for q in question_set(64):
        name = q["reference"].split("(")[0].strip("`")
        head = tokenizer.encode(f"The function `{name}` is documented below.\n\n`", add_special_tokens=False)
        out.append((head + tokenizer.encode(name, add_special_tokens=False), len(head)))
    return out


def probe(model, val, held, names) -> dict:
    import torch

    model.eval()
    with torch.no_grad():
        val_loss = model(input_ids=val, labels=val).loss.item()
        ids = torch.tensor([h[0] for h in held])
        copy_loss = model(input_ids=ids, labels=torch.tensor([h[1] for h in held])).loss.item()
        hit = total = 0
        for ids, start in names:
            pred = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
            # the name's pieces after its first, each predicted from everything before it
            hit += sum(pred[i - 1] == ids[i] for i in range(start + 1, len(ids)))
            total += len(ids) - start - 1
    model.train()
    return {"val_loss": round(val_loss, 3), "copy_loss": round(copy_loss, 3),
            "name_copy": round(hit / max(total, 1), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", help="a quickstart run folder with a `tokens` stage (e.g. runs/quickstart)")
    ap.add_argument("--share", type=float, default=0.25, help="share of the rows that are copy rows")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20, help="warm-up steps (the quickstart's base: 20)")
    ap.add_argument("--names", type=int, default=64, help="held-out API names probed (the align stage's 64)")
    ap.add_argument("--length", type=int, default=256,
                    help="tokens per copy row; other than the shards' 256 only with --share 1 (a pure copy task)")
    ap.add_argument("--micro-batch", type=int, default=16, help="rows per micro-batch (2 a step), as the quickstart")
    ap.add_argument("--order", choices=("shuffled", "corpus"), default="shuffled",
                    help="the train rows in one seeded random order (repeated each epoch), or in the shards' "
                         "order, as the pretrain stage reads them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", help="start from this HF model folder instead of a fresh tiny model "
                                   "(with --steps 0: probe it only)")
    ap.add_argument("--out", help="save the trained model here (an HF folder)")
    args = ap.parse_args(argv)
    if args.length != 256 and args.share != 1:
        ap.error("--length other than 256 needs --share 1: a micro-batch's rows are all one length")

    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from llmray.device import compute_init
    from llmray.models import ModelConfig, llama_config
    from llmray.train.config import TrainConfig
    from llmray.train.optim import build_optimizer, build_scheduler
    from llmray.train.step import train_step

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    tokens = Path(args.run_dir) / "tokens"
    tok = AutoTokenizer.from_pretrained(str(tokens / "tokenizer"))
    vocab, rows_per_mb, length = len(tok), args.micro_batch, args.length

    def read(split):
        return np.stack(pq.read_table(tokens / split).column("input_ids").to_numpy(zero_copy_only=False))

    rows, val = read("train"), torch.tensor(read("val")[:64], dtype=torch.long)
    rng = np.random.default_rng(args.seed)
    held = [copy_row(np.random.default_rng(10_000 + i), vocab, length) for i in range(16)]
    names = name_rows(tok)[:args.names]
    cfg = TrainConfig(steps=max(args.steps, 1), lr=args.lr, warmup_steps=min(args.warmup, max(args.steps, 1)),
                      micro_batch_size=rows_per_mb, grad_accum=2)
    model = (AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32) if args.init
             else LlamaForCausalLM(llama_config(ModelConfig(preset="tiny"), tok))).train()
    optimizer, compute = build_optimizer(model, cfg), compute_init(in_ray_train=False)
    scheduler = build_scheduler(optimizer, cfg)
    order = rng.permutation(len(rows)) if args.order == "shuffled" else np.arange(len(rows))
    stream, t0 = training_rows(rows, order, args.share, rng, vocab, length), time.time()

    def labelled_loss(model, batch):
        return model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss, {}

    print(json.dumps({"step": 0, "share": args.share, "train_rows": len(rows), **probe(model, val, held, names)}))
    for step in range(1, args.steps + 1):
        micro = []
        for _ in range(2):
            ids, labels = zip(*(next(stream) for _ in range(rows_per_mb)))
            micro.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
        train_step(model, micro, optimizer, scheduler, labelled_loss, compute, cfg.grad_clip)
        if step % args.every == 0 or step == args.steps:
            print(json.dumps({"step": step, "s": round(time.time() - t0), **probe(model, val, held, names)}),
                  flush=True)
    if args.out:
        model.save_pretrained(args.out)
        tok.save_pretrained(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
