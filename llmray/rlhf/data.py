"""Prompts for RL: load, hold out, template, and serve them in a resumable order.

Data flow: `prompts:` spec (`builtin:prompts` from `llmray.data.instruct.rl_prompts`, or JSONL
with `prompt` / chat `messages`; `llmray.data.formats` normalises and quarantines) -> train /
held-out split (the built-in's test split, `eval_prompts:`, or a hash of each id) -> the init
model's chat template with the generation prompt (`<|assistant|>\\n`) -> token ids; prompts
longer than `max_prompt_tokens` are quarantined. `PromptSet.batch(cursor, n)` walks a
seeded permutation per pass, so a resumed run continues with exactly the next prompts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


def _held_out(record_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) / 16**8 < fraction


@dataclass
class PromptSet:
    train: list[dict]
    eval: list[dict]
    quarantined: list[dict] = field(default_factory=list)
    seed: int = 0

    def batch(self, cursor: int, n: int) -> list[dict]:
        """Prompts cursor .. cursor+n-1 of an endless sequence of seeded shuffles of `train`."""
        out, size = [], len(self.train)
        for k in range(cursor, cursor + n):
            epoch, pos = divmod(k, size)
            order = np.random.default_rng(self.seed * 7919 + epoch).permutation(size)
            out.append(self.train[order[pos]])
        return out


def _encode(tok, records: list[dict], max_tokens: int, quarantined: list[dict]) -> list[dict]:
    out = []
    for rec in records:
        ids = tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        if len(ids) > max_tokens:
            quarantined.append({"source": "prompts", "line": None, "id": rec["id"],
                                "reason": f"prompt has {len(ids)} tokens > max_prompt_tokens {max_tokens}",
                                "text": str(rec["prompt"])[:2000]})
            continue
        out.append({**rec, "ids": list(ids)})
    return out


def load_prompts(cfg, tok) -> PromptSet:
    """The configured prompts, split and tokenized (see the module docstring)."""
    from llmray.data.formats import load_data

    train = load_data(cfg.prompts, "prompt", "train")
    quarantined = list(train.quarantined)
    if cfg.eval_prompts:
        ev = load_data(cfg.eval_prompts, "prompt", "test")
        quarantined += ev.quarantined
        train_recs, eval_recs = train.records, ev.records
    elif cfg.prompts.startswith("builtin:"):
        train_recs, eval_recs = train.records, load_data(cfg.prompts, "prompt", "test").records
    else:
        train_recs = [r for r in train.records if not _held_out(r["id"], cfg.eval_fraction)]
        eval_recs = [r for r in train.records if _held_out(r["id"], cfg.eval_fraction)]
    train_recs = _encode(tok, train_recs, cfg.max_prompt_tokens, quarantined)
    eval_recs = _encode(tok, eval_recs, cfg.max_prompt_tokens, quarantined)[: cfg.num_eval]
    if not train_recs:
        raise ValueError(f"no usable training prompts in {cfg.prompts!r} ({len(quarantined)} quarantined)")
    if not eval_recs:
        raise ValueError("no held-out prompts: set eval_prompts or raise eval_fraction")
    return PromptSet(train_recs, eval_recs, quarantined, cfg.seed)


def stop_ids(tok, stop: list[str]) -> list[int]:
    """Each configured stop token -> its id; a string that is not exactly one token is an error."""
    ids = []
    for s in stop:
        enc = tok.encode(s, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"generation.stop: {s!r} is {len(enc)} tokens in this tokenizer; each stop entry must "
                             "be a single token (e.g. <|end|>)")
        ids.append(enc[0])
    return ids
