"""MinHash signatures for many documents at once, bit-compatible with datasketch, plus LSH banding.

Permutations are datasketch's own (`datasketch.MinHash(num_perm, seed).permutations`, scheme
"affine32"): each 32-bit shingle hash h is pre-mixed with the MurmurHash3 32-bit finalizer and
mapped through a_k*h + b_k (uint32 wrap-around), and the signature is the minimum per permutation.
Instead of one numpy call per shingle (datasketch's `update`), a whole batch of documents is one
(shingles x num_perm) matrix reduced per document with `np.minimum.reduceat`, in row chunks so a
huge document never builds a huge matrix.

Two base hashes feed the same permutations:
- "fast" (default): word 5-gram hashes from `hashing.batch_ngram_hashes`, folded to 32 bits;
- "datasketch": sha1_hash32 of the shingle string `" ".join(words)` encoded as UTF-8 -- exactly
  what `MinHash.update(shingle.encode())` sees, so signatures are bit-identical to datasketch's.

Banding (`choose_bands`) picks rows per band for recall at the threshold; `band_keys` hashes each
band's rows into one uint64 bucket key.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from llmray.curate.hashing import batch_ngram_hashes, fmix64, words

_U32 = np.uint32
_CHUNK_ROWS = 8192  # shingle rows per matrix chunk: 8192 x 256 x 4 B = 8 MiB


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b), each uint32[num_perm]: its own two draws
    (`MinHash._init_permutations`, datasketch 2.x). Drawn here rather than read off a `datasketch.MinHash`
    because importing datasketch imports scipy.integrate (for its LSH parameter search): 42-46% of a
    near-dedup task's time on the tiny corpus, in every worker. tests/test_curate_units.py checks the
    arrays and the signatures against datasketch itself."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=_U32) * _U32(2) + _U32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=_U32)
    return a, b


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before the permutations."""
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def fold32(h64: np.ndarray) -> np.ndarray:
    return ((h64 >> np.uint64(32)) ^ h64).astype(_U32)


def signatures_from_hashes(hv: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """uint32[docs, num_perm] signatures from 32-bit shingle hashes grouped by `offsets`.

    A document without shingles keeps the all-0xFFFFFFFF signature (datasketch's empty MinHash).
    """
    a, b = permutations(num_perm, seed)
    n_docs = len(offsets) - 1
    sig = np.full((n_docs, num_perm), np.iinfo(_U32).max, dtype=_U32)
    counts = np.diff(offsets)
    doc_of = np.repeat(np.arange(n_docs), counts)
    mixed = fmix32(hv.astype(_U32, copy=False))
    a_col, b_col = a[:, None], b[:, None]
    for s in range(0, len(mixed), _CHUNK_ROWS):
        e = min(s + _CHUNK_ROWS, len(mixed))
        # (num_perm, shingles) layout: numpy's broadcast multiply and reduceat run ~10x faster
        # along the contiguous last axis than with the shingles as rows.
        phv = a_col * mixed[None, s:e]
        phv += b_col
        d = doc_of[s:e]
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        part = np.minimum.reduceat(phv, starts, axis=1)
        docs = d[starts]
        sig[docs] = np.minimum(sig[docs], part.T)
    return sig


def shingle_hashes(texts, ngram: int, hash_kind: str = "fast") -> tuple[np.ndarray, np.ndarray]:
    """32-bit shingle hashes of a batch of texts, grouped per document by `offsets` (repeats are
    harmless: the minimum does not change)."""
    if hash_kind == "fast":
        h64, offsets = batch_ngram_hashes(texts, ngram)
        h = fold32(h64)
    elif hash_kind == "datasketch":
        h, offsets = _sha1_shingle_hashes(texts, ngram)
    else:
        raise ValueError(f"unknown hash kind {hash_kind!r}")
    return h, offsets


def word_shingles(text: str, ngram: int) -> list[str]:
    """The shingle strings of one document (the "datasketch" mode's input; also for baselines)."""
    ws = words(text)
    if not ws:
        return []
    if len(ws) < ngram:
        return [" ".join(ws)]
    return [" ".join(ws[i:i + ngram]) for i in range(len(ws) - ngram + 1)]


def _sha1_shingle_hashes(texts, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    import hashlib

    hs: list[int] = []
    offsets = [0]
    for t in texts:
        for sh in word_shingles(t, ngram):
            hs.append(int.from_bytes(hashlib.sha1(sh.encode("utf-8")).digest()[:4], "little"))
        offsets.append(len(hs))
    return np.asarray(hs, dtype=_U32), np.asarray(offsets, dtype=np.int64)


def signatures(texts, num_perm: int = 256, ngram: int = 5, seed: int = 1,
               hash_kind: str = "fast") -> tuple[np.ndarray, np.ndarray]:
    """(signatures uint32[docs, num_perm], shingle counts int64[docs]) for a batch of texts."""
    h, offsets = shingle_hashes(texts, ngram, hash_kind)
    return signatures_from_hashes(h, offsets, num_perm, seed), np.diff(offsets)


# ---------------------------------------------------------------- banding


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents with Jaccard s share at least one band bucket)."""
    return 1.0 - (1.0 - s ** rows) ** bands


def choose_bands(num_perm: int, threshold: float, target_recall: float) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm: the most rows per band (fewest false candidates)
    whose candidate probability at `threshold` still reaches `target_recall`.

    datasketch's own optimum weighs false positives and negatives equally and at 0.8 with 128
    permutations misses a noticeable share of pairs right at the threshold; candidates here are
    verified afterwards, so extra candidates cost time, not precision.
    """
    best = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= target_recall:
            best = (bands, rows)
    if best is None:
        raise ValueError(f"no banding of {num_perm} permutations reaches recall {target_recall} at {threshold}")
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64[docs, bands] bucket keys: each band's `rows` values combined and mixed."""
    n = sig.shape[0]
    sub = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    key = np.zeros((n, bands), dtype=np.uint64)
    for r in range(rows):
        key *= np.uint64(0x100000001B3)
        key ^= sub[:, :, r]
    return fmix64(key)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise fraction of equal signature values (the MinHash Jaccard estimate)."""
    return (sig_a == sig_b).mean(axis=1)


def jaccard_std(j: float, num_perm: int) -> float:
    return math.sqrt(max(j * (1 - j), 1e-12) / num_perm)
