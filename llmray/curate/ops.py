"""The operators as Ray Data batch functions (dict of numpy arrays in, same out).

A batch always holds every row it started with: an operator that removes a document sets
`_drop` to its own name and `_why` to the reason, and truncates the text to a sample, instead of
deleting the row. Later operators only look at rows whose `_drop` is empty. So the final table
accounts for every record exactly (docs_in = kept + each operator's removals + quarantined),
the funnel is a group-by on `_drop`, and rejected samples are a selection of rows.
`_edits` collects "name=count" pairs for in-place changes (repaired UTF-8, boilerplate lines, PII).

Every operator runs as a Ray task. Stateful ones (quality, toxicity) are callable classes built once in
the driver and fetched once per worker process (`op_score`). Operators that feed a global decision
(boilerplate counts, dedup keys) send keys to shard actors and return the batch unchanged.
"""

from __future__ import annotations

import json
import math

import numpy as np

from llmray.curate import clean as C
from llmray.curate import filters as F

_OBJ = object


def _arr(values) -> np.ndarray:
    out = np.empty(len(values), dtype=_OBJ)
    out[:] = list(values)
    return out


class _View:
    """Mutable copies of the bookkeeping columns of one batch."""

    def __init__(self, batch: dict, sample_chars: int = 2000):
        self.batch = batch
        self.sample_chars = sample_chars
        self.text = _arr(batch["text"])
        self.drop = _arr(batch["_drop"])
        self.why = _arr(batch["_why"])
        self.edits = _arr(batch["_edits"])
        self.live = np.flatnonzero(self.drop == "")

    def reject(self, i: int, op: str, why: str) -> None:
        self.drop[i] = op
        self.why[i] = why
        self.text[i] = self.text[i][: self.sample_chars]

    def edit(self, i: int, counts: dict[str, int]) -> None:
        if counts:
            extra = ";".join(f"{k}={v}" for k, v in counts.items() if v)
            if extra:
                self.edits[i] = f"{self.edits[i]};{extra}" if self.edits[i] else extra

    def done(self, **extra_cols) -> dict:
        self.batch.update(text=self.text, _drop=self.drop, _why=self.why, _edits=self.edits, **extra_cols)
        return self.batch


def parse_edits(s: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in s.split(";") if s else ():
        k, _, v = part.partition("=")
        out[k] = out.get(k, 0) + int(v or 0)
    return out


# ---------------------------------------------------------------- per-document operators


def op_clean(batch: dict, cfg, sample_chars: int) -> dict:
    v = _View(batch, sample_chars)
    for i in v.live:
        text = v.text[i]
        frac = C.control_fraction(text)
        if frac > cfg.max_control_fraction:
            v.reject(i, "clean", f"binary_content: {frac:.0%} control characters > {cfg.max_control_fraction:.0%}")
            continue
        text, edits = C.clean_text(text, cfg)
        if not text:
            v.reject(i, "clean", "empty: no text after cleaning")
            continue
        v.text[i] = text
        v.edit(i, edits)
    return v.done()


_FILTERS = {"gopher_quality": F.gopher_quality, "gopher_repetition": F.gopher_repetition, "fineweb": F.fineweb}


def op_filter(batch: dict, op: str, cfg, sample_chars: int) -> dict:
    fn = _FILTERS[op]
    v = _View(batch, sample_chars)
    # The language operator's label picks the Gopher stop-word list (see filters.gopher_quality).
    langs = batch.get("language") if op == "gopher_quality" else None
    for i in v.live:
        reason = fn(v.text[i], cfg, langs[i] or None) if langs is not None else fn(v.text[i], cfg)
        if reason:
            v.reject(i, op, reason)
    return v.done()


def op_c4(batch: dict, cfg, sample_chars: int) -> dict:
    v = _View(batch, sample_chars)
    for i in v.live:
        before = v.text[i]
        text, reason = F.c4(before, cfg)
        if reason:
            v.reject(i, "c4", reason)
        elif text != before:
            v.edit(i, {"c4_lines_removed": before.count("\n") - text.count("\n")})
            v.text[i] = text
    return v.done()


def op_pii(batch: dict, cfg) -> dict:
    v = _View(batch)
    for i in v.live:
        text, counts = C.redact_pii(v.text[i], cfg)
        if counts:
            v.text[i] = text
            v.edit(i, counts)
    return v.done()


_CACHE: dict[str, object] = {}


def cached_get(ref):
    """ray.get once per worker process for large shared objects (indexes, loser lists)."""
    import ray

    key = ref.hex()
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = ray.get(ref)
    return _CACHE[key]


def op_boilerplate_strip(batch: dict, boiler_ref, min_chars: int, sample_chars: int) -> dict:
    boiler = cached_get(boiler_ref)
    v = _View(batch, sample_chars)
    if not boiler:
        return v.done()
    for i in v.live:
        text, removed = C.strip_lines(v.text[i], boiler, min_chars)
        if removed:
            v.edit(i, {"boilerplate_lines": removed})
            if not text:
                v.reject(i, "boilerplate", f"empty: all {removed} lines were boilerplate")
            else:
                v.text[i] = text
    return v.done()


def op_decontaminate(batch: dict, index_ref, min_matches: int, sample_chars: int) -> dict:
    index = cached_get(index_ref)
    v = _View(batch, sample_chars)
    if len(v.live):
        for i, (n, items) in zip(v.live, index.match([v.text[i] for i in v.live])):
            if n >= min_matches:
                v.reject(i, "decontaminate", "eval_overlap: " + json.dumps(
                    {"shared_ngrams": n, "ngram": index.ngram, "items": items}))
    return v.done()


def op_mix(batch: dict, weights: dict[str, float]) -> dict:
    """Source weights: below 1 drops documents (deterministically by id), above 1 sets `_repeat`."""
    from llmray.curate.hashing import unit_interval

    v = _View(batch)
    repeat = np.ones(len(v.drop), dtype=np.int64)
    for i in v.live:
        w = weights.get(batch["source"][i], 1.0)
        if w == 1.0:
            continue
        u = unit_interval(batch["id"][i], "mix")
        if w < 1.0:
            if u >= w:
                v.reject(i, "mix", f"downsampled: source weight {w}")
        else:
            repeat[i] = math.floor(w) + (1 if u < w - math.floor(w) else 0)
    return v.done(_repeat=repeat)


# ---------------------------------------------------------------- stateful scorers


def op_score(batch: dict, scorer_ref) -> dict:
    """A scorer (QualityUDF, ToxicityUDF) built once in the driver, fetched once per worker process.

    A task-pool map, not an actor pool: it fuses with the task maps around it (one task per block for
    boilerplate strip -> toxicity -> quality -> decontaminate -> dedup keys) and starts no processes;
    an actor pool per scorer cost ~3 s of process start-up each on a 2-core machine for no extra work."""
    return cached_get(scorer_ref)(batch)


class QualityUDF:
    """Scores live rows with the trained classifier; keeps the score in the `quality` column."""

    def __init__(self, model, threshold: float, sample_chars: int):
        self.model, self.threshold, self.sample_chars = model, threshold, sample_chars

    def __call__(self, batch: dict) -> dict:
        v = _View(batch, self.sample_chars)
        score = np.full(len(v.drop), np.nan)
        if len(v.live):
            score[v.live] = self.model.score([v.text[i] for i in v.live])
            for i in v.live:
                if score[i] < self.threshold:
                    v.reject(i, "quality", f"low_quality: score {score[i]:.3f} < {self.threshold}")
        return v.done(quality=score)


class ToxicityUDF:
    """Word-list score (fraction of words listed), optionally maxed with a classifier probability."""

    def __init__(self, entries, cfg, model, sample_chars: int):
        from llmray.curate.toxicity import WordListScorer

        self.lists, self.cfg, self.model, self.sample_chars = WordListScorer(entries), cfg, model, sample_chars

    def __call__(self, batch: dict) -> dict:
        cfg = self.cfg
        v = _View(batch, self.sample_chars)
        score = np.full(len(v.drop), np.nan)
        probs = self.model.score([v.text[i] for i in v.live]) if (self.model and len(v.live)) else None
        for k, i in enumerate(v.live):
            frac, hits = self.lists.score(v.text[i])
            score[i] = frac
            if frac > cfg.threshold:
                v.reject(i, "toxicity", f"word_list: {hits} listed words, {frac:.3f} of words > {cfg.threshold}")
            elif cfg.max_count is not None and hits > cfg.max_count:
                v.reject(i, "toxicity", f"word_list: {hits} listed words > {cfg.max_count}")
            elif probs is not None:
                score[i] = max(frac, float(probs[k]))
                if probs[k] >= cfg.classifier_threshold:
                    v.reject(i, "toxicity", f"classifier: p(toxic) {probs[k]:.3f} >= {cfg.classifier_threshold}")
        return v.done(toxicity=score)
