"""Per-format record readers used inside the Ray read tasks (see `sources.py` for the row layout).

`read_task(task, ...)` yields batches (dict of column lists) for one planned read task. Every record
ends up either as a document row or as a quarantine row with a reason:
- `undecodable_bytes`: more invalid UTF-8 than `clean.max_invalid_fraction` (else repaired, counted);
- `bad_json`: the line is not JSON (message and column from the parser);
- `wrong_type`: the record is not an object, or the text field is not a string;
- `missing_field`: the text field is absent or null;
- `unreadable_file`: the file (or the rest of it) could not be opened/decompressed/parsed;
- `truncated`: a WARC record cut short (see `warc.py`; repositories: `repos.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from llmray.curate.clean import decode, sanitize
from llmray.curate.extract import read_extractor
from llmray.curate.sources import _Rows, iter_lines, open_random_access

_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _json_type(v) -> str:
    return _JSON_TYPES.get(type(v), type(v).__name__)


def _edits(repaired: int) -> str:
    return f"utf8_repaired={repaired}" if repaired else ""


def read_task(task: dict, clean_cfg, keep_meta: bool, batch_rows: int) -> Iterator[dict]:
    rows = _Rows(task, keep_meta, batch_rows)
    if task["type"] == "python-docs":
        gen = _python_docs(rows, task)
    else:
        gen = _files(rows, task, clean_cfg)
    # warc: HTML -> text per batch here, so blocks carry the extracted text only (extract.py)
    post = (read_extractor(task) if task["type"] == "warc" else None) or (lambda batch: batch)
    for _ in gen:
        if rows.full:
            yield post(rows.take())
    if rows.cols["id"]:
        yield post(rows.take())


def _files(rows: _Rows, task: dict, clean_cfg) -> Iterator[None]:
    from llmray.curate.repos import read_repo
    from llmray.curate.warc import read_warc

    reader = {"jsonl": _jsonl, "parquet": _parquet, "text": _text, "warc": read_warc, "repo": read_repo}[task["type"]]
    for uri, rel in task["files"]:
        if rows.done:
            return
        last = 0
        try:
            for last in reader(rows, uri, rel, task, clean_cfg):  # noqa: B007 - read in the except
                yield
                if rows.done:
                    return
        except Exception as e:  # noqa: BLE001 - any I/O or format failure becomes a quarantine record
            rows.quarantine(rel, last + 1, "unreadable_file", f"{type(e).__name__}: {e}", b"")
            yield


def _record_id(rec: dict, id_field, source: str, rel: str, line: int) -> str:
    v = rec.get(id_field) if id_field else None
    if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) != "":
        return str(v)
    return f"{source}/{rel}:{line}"


def _jsonl(rows: _Rows, uri: str, rel: str, task: dict, clean_cfg) -> Iterator[int]:
    tf, idf = task["text_field"], task["id_field"]
    for lineno, raw in iter_lines(uri):
        if not raw.strip():
            continue  # a blank line holds no record
        line, bad = decode(raw, clean_cfg.max_invalid_fraction)
        if line is None:
            rows.quarantine(rel, lineno, "undecodable_bytes", f"{bad} invalid UTF-8 sequences in {len(raw)} bytes",
                            raw)
        else:
            _jsonl_record(rows, rel, lineno, line, raw, bad, tf, idf)
        yield lineno


def _jsonl_record(rows: _Rows, rel: str, lineno: int, line: str, raw: bytes, bad: int, tf: str, idf) -> None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        rows.quarantine(rel, lineno, "bad_json", f"{e.msg} (line {lineno}, column {e.colno})", raw)
        return
    except RecursionError:
        rows.quarantine(rel, lineno, "bad_json", f"nested too deeply (line {lineno})", raw)
        return
    if not isinstance(rec, dict):
        rows.quarantine(rel, lineno, "wrong_type", f"the record is a JSON {_json_type(rec)}, not an object", raw)
        return
    if rec.get(tf) is None:
        what = "is null" if tf in rec else "is missing"
        rows.quarantine(rel, lineno, "missing_field", f"field {tf!r} {what}", raw)
        return
    text = rec[tf]
    if not isinstance(text, str):
        rows.quarantine(rel, lineno, "wrong_type", f"field {tf!r} is a {_json_type(text)}, not a string", raw)
        return
    text, sur = sanitize(text)
    meta = {k: v for k, v in rec.items() if k not in (tf, idf)}
    rows.add(_record_id(rec, idf, rows.task["source"], rel, lineno), text, rel, lineno, meta, _edits(bad + sur))


def _text(rows: _Rows, uri: str, rel: str, task: dict, clean_cfg) -> Iterator[int]:
    from llmray.curate.sources import open_stream

    with open_stream(uri) as f:
        raw = f.read()
    text, bad = decode(raw, clean_cfg.max_invalid_fraction)
    if text is None:
        rows.quarantine(rel, 1, "undecodable_bytes", f"{bad} invalid UTF-8 sequences in {len(raw)} bytes", raw)
    else:
        rows.add(f"{task['source']}/{rel}", text, rel, 1, None, _edits(bad))
    yield 1


def _parquet(rows: _Rows, uri: str, rel: str, task: dict, clean_cfg) -> Iterator[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tf, idf = task["text_field"], task["id_field"]
    pf = pq.ParquetFile(open_random_access(uri))
    names = pf.schema_arrow.names
    row = 0
    if tf not in names:
        for _ in range(pf.metadata.num_rows):
            row += 1
            rows.quarantine(rel, row, "missing_field", f"column {tf!r} is missing (columns: {names[:10]})",
                            f"row {row}")
            yield row
        return
    for batch in pf.iter_batches(batch_size=1024):
        col = batch.column(tf)
        is_text = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
        is_bin = pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)
        values = col.to_pylist()
        ids = batch.column(idf).to_pylist() if idf and idf in names else [None] * len(values)
        others = [n for n in batch.schema.names if n not in (tf, idf)] if rows.keep_meta else []
        meta_cols = {n: batch.column(n).to_pylist() for n in others}
        for i, v in enumerate(values):
            row += 1
            _parquet_value(rows, rel, row, v, is_text, is_bin, col.type, tf, clean_cfg,
                           {"id": ids[i]}, {n: c[i] for n, c in meta_cols.items()})
            yield row


def _parquet_value(rows, rel, row, v, is_text, is_bin, col_type, tf, clean_cfg, idrec, meta) -> None:
    if v is None:
        rows.quarantine(rel, row, "missing_field", f"column {tf!r} is null (row {row})", f"row {row}")
        return
    bad = 0
    if is_bin:
        v, bad = decode(v, clean_cfg.max_invalid_fraction)
        if v is None:
            rows.quarantine(rel, row, "undecodable_bytes", f"{bad} invalid UTF-8 sequences (row {row})", f"row {row}")
            return
    elif not is_text:
        rows.quarantine(rel, row, "wrong_type", f"column {tf!r} has type {col_type}, not string (row {row})",
                        repr(v)[:200])
        return
    v, sur = sanitize(v)
    rows.add(_record_id(idrec, "id", rows.task["source"], rel, row), v, rel, row, meta, _edits(bad + sur))


def _python_docs(rows: _Rows, task: dict) -> Iterator[None]:
    from llmray.data.pydocs import iter_docs

    for i, rec in enumerate(iter_docs(modules=task["modules"], include_source=task["include_source"])):
        if rows.done:
            return
        meta = {k: rec[k] for k in ("module", "qualname", "kind", "signature")}
        text, sur = sanitize(rec["text"])
        rows.add(rec["id"], text, rec["module"], i + 1, meta, _edits(sur))
        yield
