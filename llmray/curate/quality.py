"""A small trainable text classifier: hashed word n-gram features + logistic regression (numpy).

Used for quality scoring (label 1 = good text) and, optionally, toxicity (label 1 = toxic).
Data flow: labelled JSONL --`load_labelled`--> texts, labels --`featurize`--> sparse rows
(log-count of hashed n-grams, L2-normalised) --`train`--> HashedLR (float32 weights over 2**bits buckets)
--`HashedLR.score(texts)`--> probabilities. Training is full-batch Adam with class-balanced loss and
an L2 penalty; a deterministic holdout split reports accuracy/AUC before the final model is refit
on everything. The model is a few MB of float32 and is shipped to Ray actors by value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from llmray.curate.hashing import ngram_hashes, unit_interval, word_hashes, words

SEED_FILE = "quality_seed.jsonl"


@dataclass
class Sparse:
    """CSR-like rows: features of row i are cols[indptr[i]:indptr[i+1]] with values vals[...]."""

    indptr: np.ndarray
    cols: np.ndarray
    vals: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))

    def dot(self, w: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows, weights=self.vals * w[self.cols], minlength=len(self.indptr) - 1)


def featurize(texts, ngrams: list[int], dim_bits: int) -> Sparse:
    shift = np.uint64(64 - dim_bits)
    indptr, cols, vals = [0], [], []
    for text in texts:
        wh = word_hashes(words(text))
        hs = [ngram_hashes(wh, n, short=False) for n in ngrams]
        h = np.concatenate(hs) if hs else np.empty(0, dtype=np.uint64)
        if len(h) == 0:
            indptr.append(indptr[-1])
            continue
        # Bucket = top bits of the n-gram hash; different n give unrelated hashes, so no salt is needed.
        b, c = np.unique((h >> shift).astype(np.int64), return_counts=True)
        v = np.log1p(c.astype(np.float32))
        v /= np.linalg.norm(v)
        cols.append(b)
        vals.append(v)
        indptr.append(indptr[-1] + len(b))
    return Sparse(np.asarray(indptr, dtype=np.int64),
                  np.concatenate(cols) if cols else np.empty(0, dtype=np.int64),
                  np.concatenate(vals).astype(np.float32) if vals else np.empty(0, dtype=np.float32))


@dataclass
class HashedLR:
    """A trained model: weights over hashed n-gram buckets, a bias, and the featurizer settings."""

    w: np.ndarray
    b: float
    ngrams: list[int]
    dim_bits: int

    def score(self, texts) -> np.ndarray:
        x = featurize(texts, self.ngrams, self.dim_bits)
        return 1.0 / (1.0 + np.exp(-(x.dot(self.w) + self.b)))

    def save(self, path) -> None:
        np.savez_compressed(path, w=self.w, b=np.float64(self.b), ngrams=np.asarray(self.ngrams),
                            dim_bits=np.int64(self.dim_bits))


def _fit(x: Sparse, y: np.ndarray, dim: int, epochs: int, l2: float, seed: int, lr: float = 0.05):
    """Full-batch Adam on the class-balanced logistic loss."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(dim) * 1e-3).astype(np.float64)
    b = 0.0
    pos = max(y.sum(), 1.0)
    neg = max(len(y) - y.sum(), 1.0)
    sw = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg))
    rows = x.rows
    m = np.zeros(dim + 1)
    v = np.zeros(dim + 1)
    for t in range(1, epochs + 1):
        p = 1.0 / (1.0 + np.exp(-(x.dot(w) + b)))
        r = sw * (p - y) / len(y)
        gw = np.bincount(x.cols, weights=x.vals * r[rows], minlength=dim) + l2 * w
        g = np.append(gw, r.sum())
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        step = lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        w -= step[:-1]
        b -= step[-1]
    return w.astype(np.float32), float(b)


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties averaged)."""
    pos, neg = scores[y > 0], scores[y <= 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="stable")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for val in np.unique(allv):  # average ranks of ties
        idx = allv == val
        if idx.sum() > 1:
            ranks[idx] = ranks[idx].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def train(texts: list[str], labels: list[int], cfg) -> tuple[HashedLR, dict]:
    """Train on labelled texts; returns the model (refit on all data) and holdout metrics."""
    y = np.asarray(labels, dtype=np.float64)
    if len(set(labels)) < 2:
        raise ValueError("classifier training data needs both labels (0 and 1)")
    dim = 1 << cfg.dim_bits
    report: dict = {"train_docs": len(texts), "positives": int(y.sum())}
    if cfg.holdout > 0:
        held = np.array([unit_interval(t, f"holdout{cfg.seed}") < cfg.holdout for t in texts])
        if 0 < held.sum() < len(texts) and len(set(y[~held])) == 2:
            x_tr = featurize([t for t, h in zip(texts, held) if not h], cfg.ngrams, cfg.dim_bits)
            w, b = _fit(x_tr, y[~held], dim, cfg.epochs, cfg.l2, cfg.seed)
            model = HashedLR(w, b, list(cfg.ngrams), cfg.dim_bits)
            s = model.score([t for t, h in zip(texts, held) if h])
            report.update(holdout_docs=int(held.sum()),
                          holdout_accuracy=round(float(((s >= 0.5) == (y[held] > 0)).mean()), 4),
                          holdout_auc=round(auc(s, y[held]), 4))
    w, b = _fit(featurize(texts, cfg.ngrams, cfg.dim_bits), y, dim, cfg.epochs, cfg.l2, cfg.seed)
    return HashedLR(w, b, list(cfg.ngrams), cfg.dim_bits), report


def load_labelled(paths: list[str], text_field: str, label_field: str) -> tuple[list[str], list[int]]:
    """Read labelled JSONL (local or pyarrow.fs URIs, globs allowed). Bad lines raise with file:line:
    training data is configuration, and a silently skipped example would change the model."""
    from llmray.curate.sources import expand_paths, iter_lines

    texts, labels = [], []
    for ref in expand_paths(paths, "jsonl"):
        for lineno, raw in iter_lines(ref.uri):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                text, label = rec[text_field], rec[label_field]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
                raise ValueError(f"{ref.uri}:{lineno}: bad training record ({type(e).__name__}: {e})") from None
            if not isinstance(text, str) or label not in (0, 1, True, False):
                raise ValueError(f"{ref.uri}:{lineno}: need a string {text_field!r} and a 0/1 {label_field!r}")
            texts.append(text)
            labels.append(int(label))
    if not texts:
        raise ValueError(f"no training records in {paths}")
    return texts, labels


def seed_set() -> tuple[list[str], list[int]]:
    """The built-in quality seed set (see `llmray.curate.seed` for how it was made)."""
    texts, labels = [], []
    with resources.files("llmray.curate").joinpath("data", SEED_FILE).open("r", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            texts.append(rec["text"])
            labels.append(int(rec["label"]))
    return texts, labels


def build(cfg) -> tuple[HashedLR, dict]:
    """Train the classifier a config block describes (its files, or the seed set when none)."""
    if cfg.train:
        texts, labels = load_labelled(cfg.train, cfg.text_field, cfg.label_field)
        source = "files"
    else:
        texts, labels = seed_set()
        source = "builtin-seed"
    model, report = train(texts, labels, cfg)
    report["data"] = source
    return model, report
