"""Deterministic, process-independent hashing of words, word n-grams and lines (numpy, vectorized).

Python's `hash()` is salted per process, so every hash that crosses a Ray worker boundary comes
from here: a word is hashed once with blake2b (cached per process), and word n-grams are combined
from word hashes with a polynomial in uint64 arithmetic (wrap-around is the modulus), then mixed
with the MurmurHash3 finalizer. Data flow: text --`words`--> [str] --`word_hashes`--> uint64[L]
--`ngram_hashes`--> uint64[L-n+1]. MinHash, decontamination, the quality model's features and
boilerplate detection all build on these.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

WORD_RE = re.compile(r"\w+")
_U64 = np.uint64
_POLY = _U64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio); any odd constant works
_CACHE: dict[str, int] = {}
_CACHE_MAX = 2_000_000  # words; cleared when full (a cache, not state: results never depend on it)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (`\\w+`): the normalisation shared by shingling and n-gram matching."""
    return WORD_RE.findall(text.lower())


def hash_bytes64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _word_hash(w: str) -> int:
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    v = _CACHE[w] = hash_bytes64(w.encode("utf-8", "surrogatepass"))
    return v


def word_hashes(ws: list[str]) -> np.ndarray:
    """uint64 hash per word (cached per process; the values are the same in every process)."""
    get = _CACHE.get
    return np.fromiter((get(w) or _word_hash(w) for w in ws), dtype=_U64, count=len(ws))


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: an avalanching bijection, so nearby polynomials spread out."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def ngram_hashes(wh: np.ndarray, n: int, short: bool = True) -> np.ndarray:
    """Hash of every word n-gram of one document (uint64). A document with fewer than n words
    yields one hash of all its words when `short` (so short documents still have a fingerprint)."""
    m = len(wh) - n + 1
    if m <= 0:
        if not short or len(wh) == 0:
            return np.empty(0, dtype=_U64)
        m, n = 1, len(wh)
    h = wh[:m].copy()
    for k in range(1, n):
        h *= _POLY
        h += wh[k:k + m]
    return fmix64(h)


def batch_ngram_hashes(texts, n: int) -> tuple[np.ndarray, np.ndarray]:
    """N-gram hashes of many documents at once: (hashes uint64[N], offsets int64[docs+1]).

    The n-gram polynomial runs once over the concatenated word hashes; n-grams that straddle two
    documents are masked out. Documents shorter than n words get one hash of all their words.
    """
    toks = [words(t) for t in texts]
    lens = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
    flat = [w for t in toks for w in t]
    wh = word_hashes(flat)
    total = len(wh)
    starts = np.zeros(len(toks) + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])
    m = total - n + 1
    if m > 0:
        h = wh[:m].copy()
        for k in range(1, n):
            h *= _POLY
            h += wh[k:k + m]
        h = fmix64(h)
        doc_of = np.repeat(np.arange(len(toks)), lens)[:m]
        valid = np.arange(m) + n <= starts[1:][doc_of]
        h, doc_of = h[valid], doc_of[valid]
    else:
        h, doc_of = np.empty(0, dtype=_U64), np.empty(0, dtype=np.int64)
    short = np.nonzero((lens > 0) & (lens < n))[0]
    if len(short):
        extra = np.concatenate([ngram_hashes(wh[starts[i]:starts[i + 1]], n) for i in short])
        h = np.concatenate([h, extra])
        doc_of = np.concatenate([doc_of, short])
        order = np.argsort(doc_of, kind="stable")
        h, doc_of = h[order], doc_of[order]
    counts = np.bincount(doc_of, minlength=len(toks))
    offsets = np.zeros(len(toks) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return h, offsets


def text_hash128(text: str) -> tuple[int, int]:
    """128-bit hash of a string as two uint64-sized ints (exact dedup keys)."""
    d = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def unit_interval(key: str, salt: str = "") -> float:
    """A deterministic pseudo-random number in [0, 1) from a string (sampling, sample selection)."""
    return hash_bytes64((salt + "\x00" + key).encode("utf-8", "surrogatepass")) / 2.0**64
