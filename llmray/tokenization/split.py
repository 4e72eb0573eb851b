"""Deterministic per-document hashing: the train/val split and uniform sampling by document id.

id --blake2b(salt, seed, id)--> 64-bit integer --/2**64--> a uniform float in [0, 1).
A document is in the val split when its "split" bucket is below `val_fraction`; the
tokenizer stage holds out the same documents (same salt and seed), so a tokenizer trained
with `heldout_fraction >= val_fraction` never saw the val documents of `tokenize`.
Independent of file layout, batch order and the number of workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SPLIT_SALT = "split"
SAMPLE_SALT = "sample"


def buckets(ids: Sequence[str], seed: int = 0, salt: str = SPLIT_SALT) -> np.ndarray:
    """One uniform float in [0, 1) per document id."""
    prefix = f"{salt}:{seed}:".encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, doc_id in enumerate(ids):
        digest = hashlib.blake2b(prefix + str(doc_id).encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def val_mask(ids: Sequence[str], val_fraction: float, seed: int = 0) -> np.ndarray:
    """True for the documents that belong to the val split."""
    if val_fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    return buckets(ids, seed, SPLIT_SALT) < val_fraction
