"""Decontamination: word n-gram overlap between documents and evaluation sets.

Data flow: eval JSONL --`build_index`--> every item's n-gram hashes (same normalisation as the
corpus: lower-case `\\w+` words), as one sorted uint64 array with the owning item per entry -->
shipped to the Ray tasks once --`EvalIndex.match(batch of texts)`--> per document the number of
distinct shared n-grams and the eval items they belong to. Items shorter than n words cannot be
matched this way; they are counted as `too_short` in the report rather than silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from llmray.curate.hashing import batch_ngram_hashes, ngram_hashes, word_hashes, words


@dataclass
class EvalIndex:
    ngram: int
    hashes: np.ndarray  # sorted uint64, one entry per (n-gram, item)
    items: np.ndarray  # int32 item number per entry
    item_keys: list[str]  # "set:item-id" per item number
    report: dict = field(default_factory=dict)  # per set: items, too_short

    def match(self, texts) -> list[tuple[int, list[str]]]:
        """Per text: (distinct shared n-grams, sorted eval item keys they come from)."""
        h, offsets = batch_ngram_hashes(texts, self.ngram)
        hit = np.isin(h, self.hashes)
        out = []
        for i in range(len(texts)):
            sel = h[offsets[i]:offsets[i + 1]][hit[offsets[i]:offsets[i + 1]]]
            if len(sel) == 0:
                out.append((0, []))
                continue
            sel = np.unique(sel)
            lo = np.searchsorted(self.hashes, sel, "left")
            hi = np.searchsorted(self.hashes, sel, "right")
            items = np.unique(np.concatenate([self.items[a:b] for a, b in zip(lo, hi)]))
            out.append((len(sel), [self.item_keys[j] for j in items]))
        return out


def _item_text(rec: dict, fields: list[str]) -> str:
    parts = []
    for f in fields:
        v = rec.get(f)
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            parts.extend(x for x in v if isinstance(x, str))
    return "\n".join(parts)


def build_index(eval_sets, ngram: int, extra: dict[str, list[tuple[str, str]]] | None = None) -> EvalIndex:
    """Read every eval set and index its n-grams. A malformed eval file raises (it is config).
    `extra`: further sets already in memory, {name: [(item id, text)]} (eval stages' task documents)."""
    from llmray.curate.sources import expand_paths, iter_lines

    sets: dict[str, list[tuple[str, str]]] = dict(extra or {})
    for es in eval_sets:
        refs = expand_paths([es.path], "jsonl")
        name = es.name or refs[0].relpath.split("/")[-1].split(".")[0]
        if name in sets:
            raise ValueError(f"two eval sets are named {name!r}; give them distinct `name`s")
        items = sets[name] = []
        for ref in refs:
            for lineno, raw in iter_lines(ref.uri):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{ref.uri}:{lineno}: bad JSON in eval set ({e})") from None
                if not isinstance(rec, dict):
                    raise TypeError(f"{ref.uri}:{lineno}: eval items must be JSON objects")
                item_id = rec.get(es.id_field) if es.id_field else None
                items.append((item_id if item_id is not None else lineno, _item_text(rec, es.text_fields)))
    return index_texts(sets, ngram)


def index_texts(sets: dict[str, list[tuple[str, str]]], ngram: int) -> EvalIndex:
    """The same index from items already in memory: {set name: [(item id, text)]} (the eval stage's
    lm-eval task documents; curate's `decontaminate.eval_stages`)."""
    all_h, all_items, keys, report = [], [], [], {}
    for name, items in sets.items():
        too_short = 0
        for item_id, text in items:
            h = ngram_hashes(word_hashes(words(text)), ngram, short=False)
            if len(h) == 0:
                too_short += 1
                continue
            h = np.unique(h)
            all_h.append(h)
            all_items.append(np.full(len(h), len(keys), dtype=np.int32))
            keys.append(f"{name}:{item_id}")
        report[name] = {"items": len(items), "too_short": too_short}
    hashes = np.concatenate(all_h) if all_h else np.empty(0, dtype=np.uint64)
    items_arr = np.concatenate(all_items) if all_items else np.empty(0, dtype=np.int32)
    order = np.argsort(hashes, kind="stable")
    return EvalIndex(ngram, hashes[order], items_arr[order], keys, report)
