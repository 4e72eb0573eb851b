"""Prompts for RL: load, hold out, template, and serve them in a resumable order.

Data flow: `prompts:` spec (`builtin:prompts` from `llmray.data.instruct.rl_prompts`, or any
data `llmray.data.formats` reads: files, folders, `datasets` folders, URIs, with `prompt` / chat
`messages` / ShareGPT `conversations`, or a `fields:` mapping; bad records quarantined) -> train /
held-out split (`llmray.data.formats.split_records`: `eval_prompts:`, the built-in's or
DatasetDict's held-out split, or a hash of each id) -> the init model's chat template with the
generation prompt -> token ids (prompts are held in memory: an RL run's prompt set is small); prompts
longer than `max_prompt_tokens` are quarantined. `PromptSet.batch(cursor, n)` walks a
seeded permutation per pass, so a resumed run continues with exactly the next prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmray.chat import prompt_ids, stop_token_ids


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
        ids = prompt_ids(tok, rec["prompt"])
        if len(ids) > max_tokens:
            quarantined.append({"source": "prompts", "line": None, "id": rec["id"],
                                "reason": f"prompt has {len(ids)} tokens > max_prompt_tokens {max_tokens}",
                                "text": str(rec["prompt"])[:2000]})
            continue
        out.append({**rec, "ids": list(ids)})
    return out


def load_prompts(cfg, tok) -> PromptSet:
    """The configured prompts, split and tokenized (see the module docstring)."""
    from llmray.data.formats import split_records

    quarantined: list[dict] = []
    train_recs, eval_recs = [], []
    for split, rec in split_records(cfg.prompts, cfg.eval_prompts, "prompt", cfg.eval_fraction, cfg.fields,
                                    quarantined.append, what=("prompts", "eval_prompts")):
        (train_recs if split == "train" else eval_recs).append(rec)
    train_recs = _encode(tok, train_recs, cfg.max_prompt_tokens, quarantined)
    eval_recs = _encode(tok, eval_recs, cfg.max_prompt_tokens, quarantined)[: cfg.num_eval]
    if not train_recs:
        raise ValueError(f"no usable training prompts in {cfg.prompts!r} ({len(quarantined)} quarantined)")
    if not eval_recs:
        raise ValueError("no held-out prompts: set eval_prompts or raise eval_fraction")
    return PromptSet(train_recs, eval_recs, quarantined, cfg.seed)


def stop_ids(tok, stop: list[str] | None, model_dir=None) -> list[int]:
    """Each configured stop token -> its id; a string that is not exactly one token is an error.
    `stop` unset: the tokenizer's and chat template's own (`llmray.chat.stop_token_ids`)."""
    if stop is None:
        ids = stop_token_ids(tok, model_dir)
        if not ids:
            raise ValueError("generation.stop: the tokenizer has no eos token and its chat template no "
                             "end-of-turn token; set generation.stop")
        return ids
    ids = []
    for s in stop:
        enc = tok.encode(s, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"generation.stop: {s!r} is {len(enc)} tokens in this tokenizer; each stop entry must "
                             "be a single token (e.g. <|end|>)")
        ids.append(enc[0])
    return ids
