"""Rollouts as padded arrays: the one layout every RL actor reads.

A batch is a dict of numpy arrays (Ray ships them zero-copy):
  input_ids      [B, P + R]  prompts LEFT-padded to P, responses RIGHT-padded to R
  attention_mask [B, P + R]
  response_mask  [B, R]      1 on generated tokens (the stop token included)
plus response-aligned per-token arrays [B, R] the driver adds (old log-probs, advantages...).
Left-padding the prompts makes every response start at column P, so the logits that predict
response token j sit at column P - 1 + j for every row (TRL's layout); positions are
recomputed from the attention mask so the padding does not shift RoPE.
"""

from __future__ import annotations

import numpy as np


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict:
    """Prompt and response id lists -> the padded batch layout above."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    n = len(prompts)
    p_len = max(len(p) for p in prompts)
    r_len = max(1, max(len(r) for r in responses))
    ids = np.full((n, p_len + r_len), pad_id, dtype=np.int64)
    att = np.zeros((n, p_len + r_len), dtype=np.int64)
    rmask = np.zeros((n, r_len), dtype=np.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, p_len - len(p): p_len] = p
        att[i, p_len - len(p): p_len] = 1
        ids[i, p_len: p_len + len(r)] = r
        att[i, p_len: p_len + len(r)] = 1
        rmask[i, : len(r)] = 1.0
    return {"input_ids": ids, "attention_mask": att, "response_mask": rmask}


def prompt_len(batch: dict) -> int:
    return batch["input_ids"].shape[1] - batch["response_mask"].shape[1]


def select(batch: dict, idx) -> dict:
    """Rows `idx` of every array (other entries copied as they are)."""
    return {k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in batch.items()}


def chunks(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(i, min(n, i + size)) for i in range(0, n, size)]


def split_even(n: int, parts: int) -> list[range]:
    """Split range(n) into `parts` contiguous, nearly equal ranges (some may be empty)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out
