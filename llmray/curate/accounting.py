"""Accounting and outputs of the curate stage, computed from the final (materialized) rows.

Every input record is one row whose `_drop` says where it went ("" kept, an operator's name, or
"quarantine"), so the numbers are exact by construction and cross-checkable:
  docs_in = docs_out + sum(removed[op]) + quarantined.
Data flow: final rows --one summary per batch (counts, rule names, edits, score histograms, the
k rejected rows with the smallest id hash per operator)--> merged on the driver --> metrics;
kept rows --expand `_repeat`, drop bookkeeping columns--> `data/*.parquet` (Ray write_parquet);
quarantine rows --streamed--> `quarantine/<source>.jsonl` (all of them);
samples --> `rejected/<op>.jsonl`; decontamination hits --> `decontamination.json`.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from llmray.curate.config import OPERATORS, op_active
from llmray.curate.hashing import unit_interval
from llmray.curate.ops import parse_edits

BINS = 20


def enabled_ops(cfg) -> list[str]:
    return [op for op in OPERATORS if op_active(cfg, op)]


def _block_summary(batch: dict, k: int) -> dict:
    drop, why, src = batch["_drop"], batch["_why"], batch["source"]
    kept = drop == ""
    s: dict = {"rows": len(drop), "by_drop": dict(Counter(drop.tolist())),
               "reasons": defaultdict(Counter), "edits": Counter(), "sources": defaultdict(Counter),
               "chars_out": int(sum(len(t) for t in batch["text"][kept])),
               "rows_out": int(batch["_repeat"][kept].sum()) if "_repeat" in batch else int(kept.sum()),
               "hist": {}, "samples": defaultdict(list), "decontam": []}
    for e in batch["_edits"]:
        if e:
            s["edits"].update(parse_edits(e))
    for d, w, so in zip(drop, why, src):
        s["sources"][so]["in"] += 1
        if d == "":
            s["sources"][so]["out"] += 1
        elif d == "quarantine":
            s["sources"][so]["quarantined"] += 1
            s["reasons"][d][w.split(":", 1)[0]] += 1
        else:
            s["reasons"][d][w.split(":", 1)[0]] += 1
    for col in ("quality", "toxicity"):
        if col in batch:
            vals = batch[col][kept]
            vals = vals[~np.isnan(vals)]
            s["hist"][col] = np.histogram(vals, bins=BINS, range=(0.0, 1.0))[0].tolist()
    for i in np.flatnonzero((drop != "") & (drop != "quarantine")):
        row = {"key": unit_interval(str(batch["id"][i]), "sample"), "id": str(batch["id"][i]),
               "source": str(src[i]), "file": str(batch["_file"][i]), "line": int(batch["_line"][i]),
               "reason": str(why[i]), "text": str(batch["text"][i])}
        lst = s["samples"][drop[i]]
        lst.append(row)
        if len(lst) > 2 * k:
            lst.sort(key=lambda r: r["key"])
            del lst[k:]
        if drop[i] == "decontaminate":
            s["decontam"].append({"id": row["id"], **json.loads(why[i].split(": ", 1)[1])})
    for lst in s["samples"].values():
        lst.sort(key=lambda r: r["key"])
        del lst[k:]
    return s


def summarize(final, k: int) -> dict:
    """Merge per-batch summaries into one (the driver only sees counts and k samples per op)."""

    def fn(batch):
        return {"payload": np.array([json.dumps(_block_summary(batch, k))], dtype=object)}

    total: dict = {"rows": 0, "by_drop": Counter(), "reasons": defaultdict(Counter), "edits": Counter(),
                   "sources": defaultdict(Counter), "chars_out": 0, "rows_out": 0, "hist": {},
                   "samples": defaultdict(list), "decontam": []}
    for row in final.map_batches(fn, batch_format="numpy", batch_size=4096).iter_rows():
        s = json.loads(row["payload"])
        for key in ("rows", "chars_out", "rows_out"):
            total[key] += s[key]
        total["by_drop"].update(s["by_drop"])
        total["edits"].update(s["edits"])
        for op, c in s["reasons"].items():
            total["reasons"][op].update(c)
        for so, c in s["sources"].items():
            total["sources"][so].update(c)
        for col, h in s["hist"].items():
            total["hist"][col] = (np.asarray(total["hist"].get(col, np.zeros(BINS, dtype=int))) + h).tolist()
        for op, lst in s["samples"].items():
            merged = sorted(total["samples"][op] + lst, key=lambda r: r["key"])
            total["samples"][op] = merged[:k]
        total["decontam"].extend(s["decontam"])
    return total


def funnel(cfg, by_drop: Counter, docs_in: int) -> tuple[list[dict], dict]:
    ops = enabled_ops(cfg)
    unknown = set(by_drop) - set(ops) - {"", "quarantine"}
    if unknown:  # a row removed by an operator that is not in the plan: the accounting would lie
        raise RuntimeError(f"rows dropped by unplanned operators {sorted(unknown)}")
    cur = docs_in - by_drop.get("quarantine", 0)
    rows, removed = [], {}
    for op in ops:
        n = by_drop.get(op, 0)
        rows.append({"op": op, "in": cur, "out": cur - n})
        removed[op] = n
        cur -= n
    return rows, removed


def _survivor_ids(final, ords: set[int]) -> dict[int, str]:
    if not ords:
        return {}
    wanted = np.asarray(sorted(ords), dtype=np.int64)

    def pick(batch):
        m = np.isin(batch["_ord"], wanted)
        return {"_ord": batch["_ord"][m], "id": batch["id"][m]}

    rows = final.map_batches(pick, batch_format="numpy").take_all()
    return {int(r["_ord"]): str(r["id"]) for r in rows}


def write_rejected(out: Path, final, ops: list[str], samples: dict) -> None:
    d = out / "rejected"
    d.mkdir(parents=True, exist_ok=True)
    dup_re = re.compile(r" of #(\d+)$")
    ords = {int(m.group(1)) for op in ("exact_dedup", "near_dedup") for r in samples.get(op, [])
            if (m := dup_re.search(r["reason"]))}
    ids = _survivor_ids(final, ords)
    for op in ops:
        with (d / f"{op}.jsonl").open("w", encoding="utf-8") as f:
            for r in samples.get(op, []):
                r = {k: v for k, v in r.items() if k != "key"}
                m = dup_re.search(r["reason"])
                if m and op in ("exact_dedup", "near_dedup"):
                    r["duplicate_of"] = ids.get(int(m.group(1)))
                    r["reason"] = dup_re.sub(f" of {r['duplicate_of']}", r["reason"])
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_quarantine(out: Path, final, expected: int) -> int:
    """Stream every quarantined row to quarantine/<source>.jsonl; returns the count written."""
    d = out / "quarantine"
    d.mkdir(parents=True, exist_ok=True)
    if expected == 0:
        return 0  # skip a pass over the data

    def pick(batch):
        m = batch["_drop"] == "quarantine"
        return {k: batch[k][m] for k in ("source", "_file", "_line", "_why", "text")}

    files, n = {}, 0
    try:
        for b in final.map_batches(pick, batch_format="numpy").iter_batches(batch_format="numpy"):
            for so, fi, li, why, raw in zip(b["source"], b["_file"], b["_line"], b["_why"], b["text"]):
                if so not in files:
                    files[so] = (d / f"{so}.jsonl").open("w", encoding="utf-8")
                reason, _, detail = str(why).partition(": ")
                files[so].write(json.dumps({"source": so, "file": fi, "line": int(li), "reason": reason,
                                            "detail": detail, "raw": raw}, ensure_ascii=False) + "\n")
                n += 1
    finally:
        for f in files.values():
            f.close()
    return n


def _kept_columns(cfg) -> list[str]:
    cols = ["id", "text", "source"]
    if cfg.output.keep_metadata:
        cols.append("meta")
    cols += [c for c in ("quality", "toxicity") if getattr(cfg, c).enabled]
    if cfg.language.enabled:
        cols += ["language", "language_score"]
    return cols


def write_data(out: Path, final, cfg, docs_out: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _kept_columns(cfg)
    d = out / "data"
    if docs_out == 0:  # Ray writes no file for an empty dataset; readers still expect a table
        d.mkdir(parents=True, exist_ok=True)
        types = {"quality": pa.float64(), "toxicity": pa.float64(), "language_score": pa.float64()}
        schema = pa.schema([(c, types.get(c, pa.string())) for c in cols])
        pq.write_table(schema.empty_table(), d / "part-00000.parquet")
        return

    def kept(batch):
        m = batch["_drop"] == ""
        rep = batch["_repeat"][m] if "_repeat" in batch else np.ones(int(m.sum()), dtype=np.int64)
        idx = np.repeat(np.flatnonzero(m), rep)
        res = {c: batch[c][idx] for c in cols}
        if (rep > 1).any():  # repeated documents (source weight > 1) get distinct ids: id#1, id#2, ...
            copy_no = np.concatenate([np.arange(r) for r in rep])
            res["id"] = np.array([i if c == 0 else f"{i}#{c}" for i, c in zip(res["id"], copy_no)], dtype=object)
        return res

    final.map_batches(kept, batch_format="numpy").write_parquet(
        str(d), min_rows_per_file=cfg.output.rows_per_file)


def write_outputs(final, cfg, cur, out: Path, log):
    from llmray.stages.base import StageResult

    ops = enabled_ops(cfg)
    s = summarize(final, cfg.output.rejected_samples)
    docs_in = s["rows"]
    quarantined = s["by_drop"].get("quarantine", 0)
    docs_out = s["by_drop"].get("", 0)
    fun, removed = funnel(cfg, s["by_drop"], docs_in)
    if docs_in != docs_out + sum(removed.values()) + quarantined:
        raise RuntimeError(f"accounting mismatch: {docs_in} != {docs_out} + {removed} + {quarantined}")
    write_data(out, final, cfg, docs_out)
    write_rejected(out, final, ops, s["samples"])
    if write_quarantine(out, final, quarantined) != quarantined:
        raise RuntimeError("quarantine file count differs from the funnel")
    outputs = {"data": "data", "rejected": "rejected", "quarantine": "quarantine"}
    metrics = {"docs_in": docs_in, "docs_out": docs_out, "quarantined": quarantined, "funnel": fun,
               "removed": removed, "rows_out": s["rows_out"], "chars_out": s["chars_out"],
               "reasons": {op: dict(c) for op, c in s["reasons"].items()}, "edits": dict(s["edits"]),
               "sources": {k: {"in": v["in"], "out": v["out"], "quarantined": v["quarantined"]}
                           for k, v in s["sources"].items()},
               "score_histograms": s["hist"], **cur.info}
    if cfg.decontaminate.enabled:
        metrics["decontamination"] = _decontam_report(out, cur.info.get("decontamination", {}), s["decontam"])
        outputs["decontamination"] = "decontamination.json"
    if cfg.quality.enabled:
        cur.quality_model.save(out / "quality_model.npz")
        outputs["quality_model"] = "quality_model.npz"
    log.info("funnel: %s", fun)
    return StageResult(metrics=metrics, outputs=outputs)


def _decontam_report(out: Path, sets: dict, hits: list[dict]) -> dict:
    """decontamination.json: per eval set, which items matched which documents; metrics: counts."""
    items: dict[str, dict[str, list[str]]] = {name: {} for name in sets}
    for h in sorted(hits, key=lambda h: h["id"]):
        for key in h["items"]:
            name = key.split(":", 1)[0]
            items.setdefault(name, {}).setdefault(key, []).append(h["id"])
    report = {name: {**sets.get(name, {}), "matched_items": len(m), "documents_removed":
                     len({d for docs in m.values() for d in docs}), "matches": m} for name, m in items.items()}
    (out / "decontamination.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return {name: {k: v for k, v in r.items() if k != "matches"} for name, r in report.items()}
