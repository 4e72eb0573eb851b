"""Can a chat model learn WHICH requests to refuse, and does that carry over to unseen intents?

Probes the first answer token, where a chat model decides between a refusal and an answer: P(refusal)
= the model's probability of the tokens every built-in refusal starts with, after the chat template's
generation prompt, on harmful phrasings and on their benign look-alikes (`llmray.data.instruct.
safety_requests`: the same templates, only the intent differs), for the train split (a sample) and the
held-out test split (unseen intents, templates and one unseen category). Then it tunes the model on the
train split's safety records alone and probes again every `--every` steps:

- `--objective full`: the cross-entropy over every answer token (what the sft stage trains);
- `--objective first`: only the first answer token's, i.e. the decision alone, with nothing else to learn.

The gap harmful − look-alike is the discrimination: ~0 means the model refuses by phrasing, not intent.
A gap on train that does not appear on test means the model memorised the trained intents without
learning what makes a request harmful (bench/README.md "Refusal: memorised, not generalised").

    .venv/bin/python bench/refusal_probe.py runs/quickstart/chat/model --objective first --steps 400

Plain torch on one thread (AdamW, micro-batches of 16 padded records), so a run stays off the second
core; prints one JSON line per probe.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def encoded(tokenizer, split: str, limit: int | None, seed: int) -> list[tuple[list[int], list[int], bool]]:
    """(ids, loss mask (the answer's tokens), harmful) for the split's safety records, in the sft stage's
    encoding (`llmray.chat.encode_chat`)."""
    from llmray.chat import encode_chat
    from llmray.data.instruct import safety_requests

    recs = safety_requests(split)
    random.Random(seed).shuffle(recs)
    out = []
    for r in recs[:limit]:
        ids, mask = encode_chat(tokenizer, r["messages"])
        out.append((ids, mask, bool(r["harmful"])))
    return out


def p_refusal(model, rows, refusal_first: list[int]) -> dict:
    """Mean P(a refusal's first token) at the decision point, harmful vs look-alike, and their gap."""
    import torch

    model.eval()
    got: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        for ids, mask, harmful in rows:
            first = mask.index(1)
            probs = model(torch.tensor([ids[:first]])).logits[0, -1].softmax(-1)
            got[harmful].append(float(probs[refusal_first].sum()))
    model.train()
    h, b = (sum(got[k]) / len(got[k]) for k in (True, False))
    return {"harmful": round(h, 3), "lookalike": round(b, 3), "gap": round(h - b, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="an HF chat model folder (e.g. runs/quickstart/chat/model)")
    ap.add_argument("--objective", choices=("full", "first"), default="first")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--probe", type=int, default=160, help="records probed per split")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.losses import masked_ce

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    train = encoded(tok, "train", None, seed=0)
    probes = {"train": train[:args.probe], "test": encoded(tok, "test", args.probe, seed=1)}
    refusal_first = sorted({ids[mask.index(1)] for ids, mask, harmful in train if harmful})

    def report(step: int, loss: float | None) -> None:
        print(json.dumps({"step": step, "objective": args.objective, "loss": loss,
                          **{split: p_refusal(model, rows, refusal_first) for split, rows in probes.items()}}),
              flush=True)

    report(0, None)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = [train[((step - 1) * args.batch + j) % len(train)] for j in range(args.batch)]
        width = max(len(ids) for ids, _, _ in batch)
        ids = torch.tensor([r[0] + [0] * (width - len(r[0])) for r in batch])
        target = torch.zeros_like(ids, dtype=torch.float32)  # the loss mask: which tokens are predicted
        for i, (_, mask, _) in enumerate(batch):
            if args.objective == "first":
                target[i, mask.index(1)] = 1.0
            else:
                target[i, :len(mask)] = torch.tensor(mask, dtype=torch.float32)
        loss, _ = masked_ce(model(ids).logits, ids, target)  # the sft stage's loss, over `target`'s tokens
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.every == 0 or step == args.steps:
            report(step, round(loss.item(), 4))
    print(json.dumps({"records_train": len(train), "refusal_first_tokens": [tok.decode([t]) for t in refusal_first],
                      "train_s": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
