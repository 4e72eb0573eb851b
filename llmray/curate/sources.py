"""Sources: expanding paths and globs, and reading records into rows, quarantining what cannot be read.

Data flow: SourceConfig --`plan_reads`--> read tasks (one per file, one per python-docs module chunk;
one sequential task for a source with `limit`) --`read_task` (inside a Ray Data map task)--> batches
of rows {id, text, source, meta, _file, _line, _ord, _drop, _why, _edits}. A record that cannot be
read becomes a row with `_drop = "quarantine"` and `_why = "<reason>: <detail>"` (bad JSON with
file and line, wrong type, missing field, undecodable bytes, unreadable file) carrying a raw snippet,
so it is counted and written to quarantine/ instead of being lost.

`_ord` = (source index << 55) | (task index << 31) | record index: the document's position in source
order, independent of parallelism. Dedup keeps the smallest `_ord` of each duplicate cluster.
Files are opened through pyarrow.fs (local paths, file://, s3://, gs://, hdfs://; a URI's
`?key=value` query, e.g. `endpoint_override=`, goes to every file the glob finds), with gzip/zstd/bz2
decompression chosen by extension.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from llmray.curate.clean import sanitize
from llmray.storage import fixed_prefix, glob_regex

RECORD_BITS, TASK_BITS, SOURCE_BITS = 31, 24, 8
_COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
_EXTENSIONS = {"jsonl": (".jsonl", ".json", ".ndjson"), "parquet": (".parquet", ".pq"), "text": (".txt", ".md"),
               "warc": (".warc", ".arc")}
ARCHIVES = (".tar.gz", ".tgz", ".zip")  # repo sources: archives of a repository
RAW_SNIPPET = 500
ROW_COLUMNS = ("id", "text", "source", "meta", "_file", "_line", "_ord", "_drop", "_why", "_edits")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRef:
    uri: str  # a local absolute path or a URI pyarrow.fs understands
    relpath: str  # path relative to the pattern's fixed prefix (for ids)


_QUERY = re.compile(r"\?([A-Za-z_]\w*=[^/?&]*(?:&[A-Za-z_]\w*=[^/?&]*)*)\Z")


def split_query(uri: str) -> tuple[str, str]:
    """(the URI without its query, "?<query>" or ""). A URI's `?key=value&...` tail holds pyarrow.fs
    options (`s3://b/crawl/*.warc.gz?endpoint_override=127.0.0.1:9000&scheme=http`): it is not part
    of the glob, and every file the glob finds is opened with it. A `?` not followed by key=value
    pairs stays a one-character wildcard."""
    m = _QUERY.search(uri) if "://" in uri else None
    return (uri[:m.start()], uri[m.start():]) if m else (uri, "")


def uri_path(uri: str) -> str:
    """The URI or path without a query: what its extension is read from."""
    return split_query(uri)[0]


def _wanted(name: str, kind: str) -> bool:
    base = name
    for ext in _COMPRESSION:
        base = base.removesuffix(ext)
    return base.endswith(_EXTENSIONS.get(kind, ())) if kind in _EXTENSIONS else True


def expand_paths(patterns: list[str], kind: str) -> list[FileRef]:
    """Files matching the patterns, sorted within each pattern; a pattern matching nothing raises."""
    refs: list[FileRef] = []
    for pat in patterns:
        found = _expand_uri(pat, kind) if "://" in pat else _expand_local(pat, kind)
        if not found:
            raise FileNotFoundError(f"no {kind} files match {pat!r}")
        refs.extend(found)
    return refs


def _expand_local(pat: str, kind: str) -> list[FileRef]:
    pat = os.path.expanduser(pat)
    if os.path.isdir(pat):
        base = os.path.abspath(pat)
        files = [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs if _wanted(f, kind)]
    elif any(c in pat for c in "*?["):
        base = os.path.abspath(fixed_prefix(pat) or ".")
        files = [f for f in globlib.glob(pat, recursive=True) if os.path.isfile(f)]
    else:
        base = os.path.dirname(os.path.abspath(pat))
        files = [pat] if os.path.isfile(pat) else []
    files = sorted(os.path.abspath(f) for f in files)
    return [FileRef(f, os.path.relpath(f, base)) for f in files]


def _expand_uri(uri: str, kind: str) -> list[FileRef]:
    import pyarrow.fs as pafs

    pat, query = split_query(uri)
    scheme = pat.split("://", 1)[0]
    fs, path = pafs.FileSystem.from_uri((fixed_prefix(pat) if any(c in pat for c in "*?[") else pat) + query)
    root = pat.split("://", 1)[1]
    if scheme == "file":
        root = path if not any(c in pat for c in "*?[") else path + pat[len(fixed_prefix(pat)):]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File and not any(c in pat for c in "*?["):
        return [FileRef(uri, path.rsplit("/", 1)[-1])]
    if info.type != pafs.FileType.Directory:
        return []
    rx = glob_regex(root) if any(c in pat for c in "*?[") else None
    out = []
    for fi in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if fi.type != pafs.FileType.File:
            continue
        if rx is not None and not rx.match(fi.path):
            continue
        if rx is None and not _wanted(fi.base_name, kind):
            continue
        out.append(FileRef(f"{scheme}://{fi.path}{query}", fi.path[len(path):].lstrip("/")))
    return sorted(out, key=lambda r: r.uri)


def open_stream(uri: str):
    """A readable binary stream (pyarrow NativeFile), decompressed according to the extension."""
    import pyarrow.fs as pafs

    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
    else:
        fs, path = pafs.LocalFileSystem(), uri
    comp = next((c for ext, c in _COMPRESSION.items() if uri_path(uri).endswith(ext)), None)
    return fs.open_input_stream(path, compression=comp)


def open_random_access(uri: str):
    import pyarrow.fs as pafs

    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs.open_input_file(path)
    return pafs.LocalFileSystem().open_input_file(uri)


def iter_lines(uri: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line bytes without the newline), streaming in 1 MiB chunks."""
    with open_stream(uri) as f:
        rest, lineno = b"", 0
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for p in parts:
                lineno += 1
                yield lineno, p.rstrip(b"\r")
        if rest:
            yield lineno + 1, rest.rstrip(b"\r")


def repo_name(uri: str) -> str:
    base = uri_path(uri).rstrip("/").rsplit("/", 1)[-1]
    for ext in ARCHIVES:
        base = base.removesuffix(ext)
    return base


def expand_repos(patterns: list[str]) -> list[tuple[str, str]]:
    """(uri, repository name) for each folder or archive the patterns match; none matching raises."""
    out: list[tuple[str, str]] = []
    for pat in patterns:
        if "://" in pat:
            found = [r.uri for r in expand_paths([pat], "repo") if uri_path(r.uri).endswith(ARCHIVES)]
        elif os.path.isdir(pat) or os.path.isfile(pat):
            found = [os.path.abspath(pat)]
        else:
            found = sorted(os.path.abspath(p) for p in globlib.glob(os.path.expanduser(pat), recursive=True)
                           if os.path.isdir(p) or p.endswith(ARCHIVES))
        found = [f for f in found if not os.path.isfile(f) or f.endswith(ARCHIVES)] if "://" not in pat else found
        if not found:
            raise FileNotFoundError(f"no repositories (folders or {', '.join(ARCHIVES)} archives) match {pat!r}")
        out.extend((f, repo_name(f)) for f in found)
    return out


# ---------------------------------------------------------------- read tasks


def make_ord(source_idx: int, task_idx: int, record_idx: int) -> int:
    if source_idx >= 1 << SOURCE_BITS or task_idx >= 1 << TASK_BITS or record_idx >= 1 << RECORD_BITS:
        raise ValueError(f"too many sources/files/records for the 63-bit order key "
                         f"({source_idx}, {task_idx}, {record_idx})")
    return (source_idx << (TASK_BITS + RECORD_BITS)) | (task_idx << RECORD_BITS) | record_idx


def _checked_input(path: str, field: str) -> str:
    if "://" in path:
        return path
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise FileNotFoundError(f"{field}: no file {path!r}")
    return full


def read_options(cfg) -> dict[str, dict]:
    """Per source type, the operator settings applied while reading (plain dicts for the read tasks):
    URL lists, the HTML check and the extractor for warc, licence and file rules for repo."""
    from llmray.curate.config import op_active

    lists = None
    if op_active(cfg, "url_filter"):
        # Read tasks run in Ray workers whose working directory is not the driver's: absolute paths,
        # and a missing list fails here, naming the field, instead of quarantining every record.
        lists = cfg.url_filter.model_dump()
        for key in ("block_lists", "allow_lists"):
            lists[key] = [_checked_input(p, f"url_filter.{key}") for p in lists[key]]
    extract = op_active(cfg, "extract")
    web = {"url_filter": lists, "html_only": extract and cfg.extract.html_only,
           "extract": cfg.extract.model_dump() if extract else None, "sample_chars": cfg.output.sample_chars}
    code = {"license": cfg.license.model_dump() if op_active(cfg, "license") else None,
            "code_filter": cfg.code_filter.model_dump() if op_active(cfg, "code_filter") else None}
    return {"warc": web, "repo": code}


def plan_reads(sources, names: list[str], options: dict[str, dict] | None = None) -> list[dict]:
    """One dict per Ray read task (plain data, so it pickles cheaply); `options` from `read_options`."""
    from llmray.data.pydocs import stdlib_modules

    tasks = []
    for si, (src, name) in enumerate(zip(sources, names)):
        common = {"source_idx": si, "source": name, "type": src.type, "text_field": src.text_field,
                  "id_field": src.id_field, "limit": src.limit, **(options or {}).get(src.type, {})}
        if src.type == "python-docs":
            mods = src.modules or stdlib_modules()
            # Contiguous slices keep _ord in module order, so "first in source order" reads naturally.
            k = 1 if src.limit else min(src.chunks, len(mods))
            groups = [mods[len(mods) * i // k: len(mods) * (i + 1) // k] for i in range(k)]
            for ti, g in enumerate(groups):
                tasks.append({**common, "task_idx": ti, "modules": g, "include_source": src.include_source})
        else:
            if src.type == "repo":
                files = expand_repos(src.path)
            else:
                files = [(r.uri, r.relpath) for r in expand_paths(src.path, src.type)]
            if src.limit:  # one sequential task: "the first `limit` records" must not depend on timing
                tasks.append({**common, "task_idx": 0, "files": files})
            else:
                tasks.extend({**common, "task_idx": ti, "files": [f]} for ti, f in enumerate(files))
    return tasks


class _Rows:
    """Accumulates output rows of one read task and hands out batches."""

    COLS = ROW_COLUMNS

    def __init__(self, task: dict, keep_meta: bool, batch_rows: int):
        self.task, self.keep_meta, self.batch_rows = task, keep_meta, batch_rows
        self.n = 0  # records emitted (the record index in _ord)
        self.cols: dict[str, list] = {c: [] for c in self.COLS}
        self.bytes = 0
        # _ord of record 0; a record's _ord is this plus its index (make_ord, checked once per batch in take)
        self.ord0 = make_ord(task["source_idx"], task["task_idx"], 0)

    @property
    def full(self) -> bool:
        return len(self.cols["id"]) >= self.batch_rows or self.bytes >= 32 << 20

    @property
    def done(self) -> bool:
        lim = self.task.get("limit")
        return bool(lim) and self.n >= lim

    def add(self, doc_id, text, file, line, meta=None, edits="", drop="", why="", meta_json: str = ""):
        """One row; `meta` a dict encoded here, or `meta_json` already encoded as json.dumps would."""
        c = self.cols
        c["id"].append(sanitize(str(doc_id))[0])
        c["text"].append(text)
        c["source"].append(self.task["source"])
        if not self.keep_meta:
            meta_json = ""
        elif meta:
            meta_json = json.dumps(meta, ensure_ascii=False, default=str)
        c["meta"].append(sanitize(meta_json)[0] if meta_json else "")
        c["_file"].append(file)
        c["_line"].append(line)
        c["_ord"].append(self.ord0 + self.n)
        c["_drop"].append(drop)
        c["_why"].append(why)
        c["_edits"].append(edits)
        self.n += 1
        self.bytes += len(text)

    def quarantine(self, file, line, reason: str, detail: str, raw):
        snippet = raw[:RAW_SNIPPET].decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)
        self.add(f"{self.task['source']}/{file}:{line}", sanitize(snippet[:RAW_SNIPPET])[0], file, line,
                 drop="quarantine", why=f"{reason}: {detail}")

    def take(self) -> dict:
        make_ord(self.task["source_idx"], self.task["task_idx"], self.n - 1)  # raises past the record bits
        out, self.cols, self.bytes = self.cols, {c: [] for c in self.COLS}, 0
        return out
