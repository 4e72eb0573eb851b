"""What a stage's fingerprint covers: the config fields that change results, and the content of the
external inputs it reads.

Data flow (llmray.runner.fingerprints calls `stage_payload` per stage):
  stage config --config_payload--> its fields as JSON, less those marked EXECUTION_ONLY (log and
      checkpoint cadence, timeouts, CPUs reserved: how a stage runs, not what it produces);
  stage config --external_inputs--> (field path, spec) for every field marked EXTERNAL_INPUT
      (`data:`, `from:`, curate `path:`, prompt files, `module:function` rewards)
      --InputDigests.digest--> one digest per spec:
        local files, folders, globs   sha256 of (relative name, content) of every file; a file's content
                                      hash is kept in `<run>/.input-digests.json` under its size and
                                      mtime, so an unchanged file is not read again and a touched but
                                      unchanged one costs one read and no rerun;
        object-store URIs             the store's listing: every object's name, size and modification
                                      time (pyarrow.fs reports no ETag); an upload of new content
                                      changes the time;
        `module:function`             the content of the module's source file;
        `builtin:<name>`              nothing here: built-in data is versioned by the kind's VERSION.
  stage config --content_inputs--> digests a config block computes itself (`content_digests(pipe, digest)`):
      an eval stage's tasks (built-in task files, task YAMLs, registry names with lm-eval's version), and
      a curate stage's `decontaminate.eval_stages` (those eval stages' task digests).
So editing an input file in place reruns exactly the stages that read it (and their dependents,
whose fingerprints include it), and nothing else.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from llmray.config import EXECUTION_ONLY, EXTERNAL_INPUT
from llmray.storage import glob_files, is_uri, open_uri

CALLABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
CACHE_FILE = ".input-digests.json"


def _marked(field, marker: dict) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and all(extra.get(k) == v for k, v in marker.items())


def config_payload(model: BaseModel) -> dict:
    """The model's fields as JSON values, recursively, without the EXECUTION_ONLY ones."""
    out = {}
    for name, field in type(model).model_fields.items():
        if _marked(field, EXECUTION_ONLY):
            continue
        out[name] = _payload_value(getattr(model, name))
    return out


def _payload_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return config_payload(value)
    if isinstance(value, (list, tuple)):
        return [_payload_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _payload_value(v) for k, v in value.items()}
    return to_jsonable_python(value)


def external_inputs(model: BaseModel, prefix: str = "", stages: frozenset = frozenset()) -> list[tuple[str, str]]:
    """(dotted field path, spec) of every non-empty EXTERNAL_INPUT field value, recursively. A value that
    names a stage (a field that takes a stage or a file, e.g. `reward: rm` or `reward: pkg:fn`) is an
    input stage, fingerprinted as such, not a file; config blocks inside a marked list (reward terms)
    are searched for their own marked fields."""
    if not prefix and hasattr(model, "input_refs"):
        stages = frozenset(r for refs in model.input_refs().values() for r in refs)
    found: list[tuple[str, str]] = []
    for name, field in type(model).model_fields.items():
        value, path = getattr(model, name), f"{prefix}{name}"
        if _marked(field, EXTERNAL_INPUT):
            if isinstance(value, dict):
                items = [(f"{path}.{k}", v) for k, v in value.items()]
            elif isinstance(value, (list, tuple)):
                items = [(f"{path}.{i}", v) for i, v in enumerate(value)]
            else:
                items = [(path, value)]
            found += [(p, v) for p, v in items if isinstance(v, str) and v and v not in stages]
            for p, v in items:
                if isinstance(v, BaseModel):
                    found += external_inputs(v, f"{p}.", stages)
            continue
        for i, item in _children(value):
            found += external_inputs(item, f"{path}{i}.", stages)
    return found


def _children(value: Any):
    if isinstance(value, BaseModel):
        yield "", value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if isinstance(item, BaseModel):
                yield f".{i}", item


class InputDigests:
    """Content digests of external inputs, with a per-file cache keyed by (size, mtime)."""

    def __init__(self, cache_path: Path | None):
        self.cache_path = cache_path
        self.cache: dict[str, list] = {}
        self.dirty = False
        if cache_path is not None and cache_path.is_file():
            try:
                self.cache = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                self.cache = {}  # a damaged cache only costs a re-read

    def digest(self, spec: str) -> str:
        if spec.startswith("builtin:"):
            return "builtin"
        if is_uri(spec):
            return _uri_digest(spec)
        if CALLABLE_RE.match(spec) and not Path(spec).exists():
            return self._callable_digest(spec)
        files = _local_files(spec)
        if not files:
            return "missing"  # the stage reports it when it runs; the config check names the field
        h = hashlib.sha256()
        root = Path(spec).expanduser()
        for f in files:
            rel = os.path.relpath(f, root) if root.is_dir() else str(f)
            h.update(f"{rel}\0{self._file_digest(f)}\n".encode())
        return h.hexdigest()[:20]

    def _file_digest(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        hit = self.cache.get(key)
        if hit and hit[:2] == stamp:
            return hit[2]
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self.cache[key] = [*stamp, h.hexdigest()]
        self.dirty = True
        return h.hexdigest()

    def _callable_digest(self, ref: str) -> str:
        module = ref.split(":", 1)[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            return f"module:{module}"  # not importable here: the config check reports it
        return "module:" + self._file_digest(Path(spec.origin))

    def save(self) -> None:
        if self.dirty and self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache))
            tmp.replace(self.cache_path)
            self.dirty = False


def _local_files(spec: str) -> list[Path]:
    """Every regular file a local spec names (a file, a folder walked recursively, or a glob), sorted."""
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        hits = [Path(p) for p in glob.glob(str(path), recursive=True)]
    else:
        hits = [path] if path.exists() else []
    files: list[Path] = []
    for hit in hits:
        files += sorted(p for p in hit.rglob("*") if p.is_file()) if hit.is_dir() else [hit]
    return sorted(set(files))


def _uri_digest(uri: str) -> str:
    """The store's listing under `uri` (a file, a folder, or a glob): (name, size, mtime) of every object."""
    import pyarrow.fs as pafs

    fs, path = open_uri(uri)
    info = fs.get_file_info(path)
    if any(c in path for c in "*?[") and info.type == pafs.FileType.NotFound:
        infos = glob_files(fs, path)
        if not infos:
            return "missing"
    elif info.type == pafs.FileType.Directory:
        infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                 if i.type == pafs.FileType.File]
    elif info.type == pafs.FileType.File:
        infos = [info]
    else:
        return "missing"
    h = hashlib.sha256()
    for i in sorted(infos, key=lambda i: i.path):
        mtime = i.mtime_ns if i.mtime_ns is not None else ""
        h.update(f"{i.path}\0{i.size}\0{mtime}\n".encode())
    return h.hexdigest()[:20]


def content_inputs(model: BaseModel, pipe, digests: InputDigests, prefix: str = "") -> dict[str, str]:
    """Digests that config blocks declare themselves through a `content_digests(pipe, digest)` method:
    content a block reads by its own rules (an eval stage's task names and files), or through another
    stage's config without depending on it (curate's `decontaminate.eval_stages`: no edge, so no cycle)."""
    found: dict[str, str] = {}
    hook = getattr(model, "content_digests", None)
    if callable(hook):
        found.update({f"{prefix}{k}": v for k, v in hook(pipe, digests.digest).items()})
    for name in type(model).model_fields:
        for i, item in _children(getattr(model, name)):
            found.update(content_inputs(item, pipe, digests, f"{prefix}{name}{i}."))
    return found


def stage_payload(cfg, version: str, input_fps: dict[str, list[str]], digests: InputDigests, pipe=None) -> dict:
    """Everything a stage's fingerprint is computed from."""
    payload = {
        "kind": cfg.kind,
        "version": version,
        "config": config_payload(cfg),
        "inputs": input_fps,
        "external": {path: digests.digest(spec) for path, spec in external_inputs(cfg)},
    }
    content = content_inputs(cfg, pipe, digests)
    if content:  # only when some block declares any: every other stage's fingerprint stays as it was
        payload["content"] = content
    return payload
