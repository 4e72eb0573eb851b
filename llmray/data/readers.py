"""Where post-training records come from: files, folders, globs and object-store URIs, streamed.

A data spec (anything but `builtin:`) names, locally or on an object store
(`s3://bucket/prefix/...?endpoint_override=host:port&scheme=http`, `gs://...`; opened with
pyarrow.fs through `llmray.storage.open_uri`, as the workdir is):
  - a file: JSON Lines (`.jsonl`, `.ndjson`, optionally `.gz` / `.zst` / `.bz2`), Parquet
    (`.parquet`, `.pq`) or Arrow (`.arrow`: IPC stream, as Hugging Face `datasets` writes, or IPC file);
  - a Hugging Face `datasets` `save_to_disk` folder (`state.json` lists its arrow files), or a
    DatasetDict folder (`dataset_dict.json` + one such folder per split; the caller's split picks one);
  - any other folder: every file of the formats above under it, recursively, in name order;
  - a glob of files (`*`, `?`, `[..]`, `**`).

Data flow: spec --`resolve`--> [Source(fs, path, fmt, name)] --`iter_raw`--> RawRecord(source,
line, record | None, raw text, error) one at a time: JSON Lines line by line through a
(de)compressing stream, Parquet by row-group batches, Arrow by record batches. No file is read whole
into memory. A record that cannot be parsed is yielded with `error` set (the caller quarantines it);
a file that cannot be opened raises.
"""

from __future__ import annotations

import glob
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmray.curate.sources import _COMPRESSION
from llmray.storage import StorageError, glob_files, is_uri, open_uri

JSONL_EXT = (".jsonl", ".ndjson")
PARQUET_EXT = (".parquet", ".pq")
ARROW_EXT = (".arrow",)
HELDOUT_SPLITS = ("test", "validation", "valid", "eval", "dev")
GLOB_CHARS = "*?["
BATCH_ROWS = 256  # columnar rows turned into Python dicts at a time
RAW_CHARS = 2000  # raw text kept with a quarantined record


@dataclass(frozen=True)
class Source:
    fs: object  # a pyarrow filesystem
    path: str  # the path on it
    fmt: str  # "jsonl" | "parquet" | "arrow"
    name: str  # what quarantine entries call it (the local path or the URI)


@dataclass
class RawRecord:
    source: str
    line: int  # 1-based line (JSON Lines) or row (columnar) within the file
    record: object  # the parsed value (None when `error`)
    raw: str  # the text a quarantine entry keeps
    error: str | None = None


def file_format(name: str) -> str | None:
    """The format a file name says it holds, or None."""
    base = name.lower()
    for ext in _COMPRESSION:
        if base.endswith(ext):
            base = base[: -len(ext)]
            return "jsonl" if base.endswith(JSONL_EXT) else None  # only JSON Lines come compressed
    for fmt, exts in (("jsonl", JSONL_EXT), ("parquet", PARQUET_EXT), ("arrow", ARROW_EXT)):
        if base.endswith(exts):
            return fmt
    return None


def _has_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def _open(spec: str):
    """(pyarrow fs, path on it, display prefix) of a spec; a URI's query stays in the fs only."""
    import pyarrow.fs as pafs

    if is_uri(spec):
        try:
            fs, path = open_uri(spec)
        except StorageError as e:
            raise FileNotFoundError(f"{spec!r}: cannot open the store: {e.__cause__ or e}") from e
        return fs, path, spec.split("://", 1)[0] + "://"
    return pafs.LocalFileSystem(), str(Path(spec).expanduser().absolute()), ""


def _info(fs, path: str):
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise FileNotFoundError(f"cannot read {path}: {e}") from e


def _read_json(fs, path: str) -> dict:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def _dict_splits(fs, path: str) -> list[str] | None:
    """The split names of the DatasetDict folder at `path`, or None when it is not one."""
    import pyarrow.fs as pafs

    if _info(fs, posixpath.join(path, "dataset_dict.json")).type != pafs.FileType.File:
        return None
    return list(_read_json(fs, posixpath.join(path, "dataset_dict.json")).get("splits") or [])


def splits_of(spec: str) -> list[str] | None:
    """The split names of a DatasetDict folder spec, or None when `spec` is not one."""
    if spec.startswith("builtin:") or _has_glob(spec.split("?", 1)[0]):
        return None
    fs, path, _ = _open(spec)
    return _dict_splits(fs, path)


def pick_split(splits: list[str], split: str, where: str) -> str:
    """`split` ("train", or "test" = any held-out split name) among a DatasetDict's splits."""
    want = (split,) if split not in ("test", *HELDOUT_SPLITS) else HELDOUT_SPLITS
    for name in want:
        if name in splits:
            return name
    raise FileNotFoundError(f"{where} is a DatasetDict with splits {splits}, none of them {list(want)}; "
                            f"name one split's folder instead (e.g. {where.rstrip('/')}/{splits[0] if splits else 'train'})")


def resolve(spec: str, split: str = "train") -> list[Source]:
    """The files a spec names, in order (see the module docstring). Raises FileNotFoundError when none."""
    import pyarrow.fs as pafs

    fs, path, prefix = _open(spec)
    shown = (lambda p: prefix + p) if prefix else (lambda p: p)
    if _has_glob(path):
        if prefix:  # object stores have no glob: list below the pattern's fixed prefix and match
            files = [i.path for i in glob_files(fs, path)]
        else:
            files = sorted(f for f in glob.glob(path, recursive=True) if Path(f).is_file())
        out = [Source(fs, f, file_format(f), shown(f)) for f in files if file_format(f)]
    else:
        info = _info(fs, path)
        if info.type == pafs.FileType.File:
            fmt = file_format(path)
            if fmt is None:
                raise ValueError(f"{spec!r}: unknown file type (expected .jsonl[.gz|.zst], .parquet or "
                                 ".arrow)")
            return [Source(fs, path, fmt, spec if not prefix else shown(path))]
        if info.type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{spec!r}: no such file or folder")
        out = _folder(fs, path, split, shown)
    if not out:
        raise FileNotFoundError(f"{spec!r}: no .jsonl[.gz|.zst], .parquet or .arrow files found")
    return out


def _folder(fs, path: str, split: str, shown) -> list[Source]:
    import pyarrow.fs as pafs

    join = posixpath.join
    splits = _dict_splits(fs, path)
    if splits is not None:
        path = join(path, pick_split(splits, split, shown(path)))
    if _info(fs, join(path, "state.json")).type == pafs.FileType.File:  # a `save_to_disk` Dataset
        files = [f["filename"] for f in _read_json(fs, join(path, "state.json")).get("_data_files", [])]
        return [Source(fs, join(path, f), "arrow", shown(join(path, f))) for f in files]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and file_format(i.base_name))
    return [Source(fs, f, file_format(f), shown(f)) for f in files]


# ---------------------------------------------------------------- streaming


def iter_raw(spec: str, split: str = "train") -> Iterator[RawRecord]:
    """Every record of every file `spec` names, one at a time (see the module docstring)."""
    for src in resolve(spec, split):
        yield from READERS[src.fmt](src)


def _jsonl(src: Source) -> Iterator[RawRecord]:
    comp = next((c for ext, c in _COMPRESSION.items() if src.path.lower().endswith(ext)), None)
    with src.fs.open_input_stream(src.path, compression=comp) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace")
        for n, line in enumerate(text, 1):
            if not line.strip():
                continue
            try:
                yield RawRecord(src.name, n, json.loads(line), line)
            except json.JSONDecodeError as e:
                yield RawRecord(src.name, n, None, line, f"invalid JSON: {e.msg}")


def _rows(src: Source, batches) -> Iterator[RawRecord]:
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield RawRecord(src.name, n, row, "")


def _parquet(src: Source) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    with src.fs.open_input_file(src.path) as f:
        yield from _rows(src, pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS))


def _arrow(src: Source) -> Iterator[RawRecord]:
    import pyarrow as pa

    with src.fs.open_input_file(src.path) as f:
        try:
            batches = pa.ipc.open_stream(f)  # the IPC stream format `datasets` writes
        except pa.ArrowInvalid:
            f.seek(0)
            reader = pa.ipc.open_file(f)  # the random-access IPC file format
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        yield from _rows(src, batches)


READERS = {"jsonl": _jsonl, "parquet": _parquet, "arrow": _arrow}


def raw_text(rec: RawRecord) -> str:
    """The text a quarantine entry keeps: the line as read, or the row as JSON."""
    text = rec.raw or json.dumps(rec.record, ensure_ascii=False, default=str)
    return text.rstrip("\n")[:RAW_CHARS]


def check_local(spec: str) -> None:
    """Config-time check of a local spec (no network for URIs): it must name something that exists."""
    if is_uri(spec):
        from llmray.storage import check_workdir

        check_workdir(spec)
        return
    p = str(Path(spec).expanduser())
    if _has_glob(p):
        if not any(Path(f).is_file() and file_format(f) for f in glob.glob(p, recursive=True)):
            raise ValueError(f"no .jsonl[.gz|.zst], .parquet or .arrow files match {spec!r}")
    elif Path(p).is_file():
        if file_format(p) is None:
            raise ValueError(f"{spec!r}: unknown file type (expected .jsonl[.gz|.zst], .parquet, .arrow, or a "
                             "folder of them / a `datasets` save_to_disk folder)")
    elif not Path(p).is_dir():
        raise ValueError(f"no such file or folder: {spec!r} (or `builtin:<name>`)")
