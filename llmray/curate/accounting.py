"""Accounting and outputs of the curate stage, computed from the final (materialized) rows.

Every input record is one row whose `_drop` says where it went ("" kept, an operator's name, or
"quarantine"), so the numbers are exact by construction and cross-checkable:
  docs_in = docs_out + sum(removed[op]) + quarantined.
Data flow: final rows --one summary per block (counts, rule names, edits, score histograms, the
k rejected rows with the smallest id hash per operator)--> merged on the driver --> metrics;
kept rows --expand `_repeat`, drop bookkeeping columns--> `data/*.parquet` (Ray write_parquet).
Each pass reads the blocks as Arrow tables and works with pyarrow.compute: only rejected, edited or
quarantined rows become Python objects, never the kept text (bench/README.md, WARC);
quarantine rows --streamed--> `quarantine/<source>.jsonl` (all of them);
samples --> `rejected/<op>.jsonl`; decontamination hits --> `decontamination.json`.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from llmray.curate.config import OPERATORS, op_active
from llmray.curate.hashing import unit_interval
from llmray.curate.ops import parse_edits

BINS = 20


def enabled_ops(cfg) -> list[str]:
    return [op for op in OPERATORS if op_active(cfg, op)]


def _counts(arr) -> dict:
    """{value: count} of an Arrow string column (pyarrow.compute.value_counts)."""
    return {v["values"]: v["counts"] for v in pc.value_counts(arr).to_pylist()}


def _pair_counts(t, a: str, b: str) -> list[tuple[str, str, int]]:
    """(a, b, rows) for each distinct pair of the two columns (an Arrow group-by)."""
    g = t.select([a, b]).group_by([a, b]).aggregate([([], "count_all")])
    return list(zip(g[a].to_pylist(), g[b].to_pylist(), g["count_all"].to_pylist()))


def _block_summary(t, k: int) -> dict:
    """One block's counts, edits, histograms and k rejected samples per operator, from its Arrow
    columns: vectorised (pyarrow.compute), so only edited and rejected rows become Python objects."""
    drop = t["_drop"]
    kept = pc.equal(drop, "")
    s: dict = {"rows": t.num_rows, "by_drop": _counts(drop),
               "reasons": defaultdict(Counter), "edits": Counter(), "sources": defaultdict(Counter),
               "chars_out": pc.sum(pc.utf8_length(pc.filter(t["text"], kept))).as_py() or 0,
               "hist": {}, "samples": defaultdict(list), "decontam": []}
    s["rows_out"] = (pc.sum(pc.filter(t["_repeat"], kept)).as_py() or 0) if "_repeat" in t.column_names \
        else s["by_drop"].get("", 0)
    for e in pc.filter(t["_edits"], pc.not_equal(t["_edits"], "")).to_pylist():
        s["edits"].update(parse_edits(e))
    for so, d, n in _pair_counts(t, "source", "_drop"):
        c = s["sources"][so]
        c["in"] += n
        if d in ("", "quarantine"):
            c["out" if d == "" else "quarantined"] += n
    out = t.filter(pc.invert(kept))  # removed or quarantined rows: the reason is the `_why` up to ":"
    if out.num_rows:
        reason = pc.list_element(pc.split_pattern(out["_why"], ":", max_splits=1), 0)
        for d, r, n in _pair_counts(out.select(["_drop"]).append_column("reason", reason), "_drop", "reason"):
            s["reasons"][d][r] += n
    for col in ("quality", "toxicity"):
        if col in t.column_names:
            vals = pc.filter(t[col], kept).to_numpy()
            vals = vals[~np.isnan(vals)]
            s["hist"][col] = np.histogram(vals, bins=BINS, range=(0.0, 1.0))[0].tolist()
    removed = out.filter(pc.not_equal(out["_drop"], "quarantine"))
    for r in removed.select(["id", "source", "_file", "_line", "_drop", "_why", "text"]).to_pylist():
        row = {"key": unit_interval(str(r["id"]), "sample"), "id": str(r["id"]), "source": r["source"],
               "file": r["_file"], "line": int(r["_line"]), "reason": r["_why"], "text": r["text"]}
        lst = s["samples"][r["_drop"]]
        lst.append(row)
        if len(lst) > 2 * k:
            lst.sort(key=lambda r: r["key"])
            del lst[k:]
        if r["_drop"] == "decontaminate":
            s["decontam"].append({"id": row["id"], **json.loads(r["_why"].split(": ", 1)[1])})
    for lst in s["samples"].values():
        lst.sort(key=lambda r: r["key"])
        del lst[k:]
    return s


def summarize(final, k: int) -> dict:
    """Merge per-block summaries into one (the driver only sees counts and k samples per op). The
    blocks are read as Arrow tables, whole: no conversion of the text to Python or numpy."""
    import pyarrow as pa

    def fn(block):
        return pa.table({"payload": [json.dumps(_block_summary(block, k))]})

    total: dict = {"rows": 0, "by_drop": Counter(), "reasons": defaultdict(Counter), "edits": Counter(),
                   "sources": defaultdict(Counter), "chars_out": 0, "rows_out": 0, "hist": {},
                   "samples": defaultdict(list), "decontam": []}
    for row in final.map_batches(fn, batch_format="pyarrow", batch_size=None, zero_copy_batch=True).iter_rows():
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
    import pyarrow as pa

    if not ords:
        return {}
    wanted = pa.array(sorted(ords), type=pa.int64())

    def pick(block):
        return block.select(["_ord", "id"]).filter(pc.is_in(block["_ord"], value_set=wanted))

    rows = final.map_batches(pick, batch_format="pyarrow", batch_size=None, zero_copy_batch=True).take_all()
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

    def pick(block):  # Arrow in and out: only the quarantined rows become Python objects
        return block.select(["source", "_file", "_line", "_why", "text"]).filter(pc.equal(block["_drop"], "quarantine"))

    files, n = {}, 0
    try:
        quarantined = final.map_batches(pick, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
        for b in quarantined.iter_batches(batch_format="numpy"):
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


_OUT_TYPES = {"quality": "float64", "toxicity": "float64", "language_score": "float64"}


def write_data(out: Path, final, cfg, docs_out: int) -> None:
    """Kept rows to data/*.parquet: each block filtered and selected as an Arrow table (no conversion
    of the text), cast to the output schema, written by Ray's parquet sink."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _kept_columns(cfg)
    schema = pa.schema([(c, _OUT_TYPES.get(c, "string")) for c in cols])
    d = out / "data"
    if docs_out == 0:  # Ray writes no file for an empty dataset; readers still expect a table
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), d / "part-00000.parquet")
        return

    def kept(block):
        m = pc.equal(block["_drop"], "")
        if "_repeat" not in block.column_names or not pc.any(pc.greater(block["_repeat"], 1)).as_py():
            return block.select(cols).filter(m).cast(schema)
        # repeated documents (source weight > 1): each kept row `_repeat` times, with distinct ids id#1, id#2, ...
        mask = m.to_numpy()
        rep = block["_repeat"].to_numpy()[mask]
        res = block.select(cols).take(np.repeat(np.flatnonzero(mask), rep))
        copy_no = np.concatenate([np.arange(r) for r in rep])
        ids = [i if c == 0 else f"{i}#{c}" for i, c in zip(res["id"].to_pylist(), copy_no)]
        return res.set_column(res.column_names.index("id"), "id", pa.array(ids, pa.string())).cast(schema)

    final.map_batches(kept, batch_format="pyarrow", batch_size=None, zero_copy_batch=True).write_parquet(
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
