"""Where a run directory lives: a local folder, or an object store (`workdir: s3://...`) with a local mirror.

Local workdir (a path, as on a laptop or a shared mount): the run directory is `<workdir>/<name>`
and everything here is a no-op. URI workdir (anything `pyarrow.fs.FileSystem.from_uri` opens:
`s3://bucket/prefix`, `gs://...`, `s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http`
for S3-compatible stores): the durable run directory is `<workdir>/<name>` on the store, and
stages work in a local mirror, `<mirror_dir>/<name>` (pipeline field `mirror_dir`):

  plan, caching, status   read each stage's manifest.json from the store (`RunStore.manifest`);
  before a stage runs     its completed input stages are made present in the mirror (`fetch`): a
                          missing copy, or one of another completion (fingerprint, finish time),
                          is downloaded whole (into `.pull/<stage>`, then renamed into place); a
                          copy of the same completion gets only the files it lacks;
  stage start             the store's stale copy of the stage is deleted and a `running`
                          manifest put there (`begin`);
  stage completed         every output file is uploaded, then manifest.json LAST (`publish`):
                          object stores have no rename, so a completed manifest on the store
                          always sits beside complete outputs; a crash mid-upload leaves none;
  stage failed            log.txt, then the `failed` manifest (`publish_failed`);
  Ray Train checkpoints   straight to `<workdir>/<name>/.work/<stage>-<fp>/ray_train` on the
                          store (`work_remote` -> RunConfig(storage_path, storage_filesystem)),
                          so a rerun of the same fingerprint on any machine resumes from them;
                          deleted once the stage completes (`drop_work`);
  other checkpoints       PPO/GRPO save outside Ray Train: each checkpoint folder is pushed as
                          `.work/<stage>-<fp>/ckpt-<iteration>/`, then `latest.json` points at
                          it (`push_checkpoint`); a rerun with no local checkpoint pulls it;
  serve / report          `fetch` what they read first (whole served stages; report files only).

Only pyarrow.fs is used (`FileSystem.from_uri`, `copy_files`, `get_file_info`,
`open_output_stream`); credentials come from the usual environment / instance roles.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes pyarrow.fs opens (hdfs needs a JVM and libhdfs on every node).
SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "file")
MANIFEST = "manifest.json"
UPLOAD_THREADS = 8


class StorageError(RuntimeError):
    """The object store behind `workdir` could not be opened, read or written."""


def is_uri(workdir: str) -> bool:
    return bool(URI_RE.match(workdir))


def check_workdir(workdir: str) -> str:
    """Config-time check of `workdir` (no network): a local path, or a URI pyarrow.fs can open."""
    m = URI_RE.match(workdir)
    if not m:
        return workdir
    scheme = m.group(1).lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported URI scheme {scheme!r}: give a local or mounted path, or a URI with one "
                         f"of {', '.join(s + '://' for s in SCHEMES)} (opened with pyarrow.fs)")
    parts = urllib.parse.urlsplit(workdir)
    if scheme != "file" and not parts.netloc:
        raise ValueError(f"{scheme}:// URI names no bucket (expected {scheme}://bucket/prefix)")
    if scheme == "hdfs":
        return workdir  # opening it needs a JVM; checked when the run starts
    query = urllib.parse.parse_qs(parts.query)
    probe = workdir
    if scheme == "s3" and "region" not in query and "endpoint_override" not in query:
        # Without a region pyarrow asks AWS for the bucket's region; a fixed one keeps this offline.
        probe += ("&" if parts.query else "?") + "region=us-east-1"
    import pyarrow.fs as pafs

    try:
        pafs.FileSystem.from_uri(probe)
    except Exception as e:  # noqa: BLE001 - any pyarrow parse error becomes a config error
        raise ValueError(f"pyarrow.fs cannot open this URI: {e}") from None
    return workdir


@functools.cache
def open_uri(uri: str):
    """(pyarrow filesystem, path on it) for a workdir URI; cached per process."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001
        raise StorageError(f"workdir {uri!r}: cannot open the store: {e}") from e


def glob_regex(pattern: str) -> re.Pattern:
    """A glob (`*`, `?`, `[...]`, `**/`) on an object store's paths as a regex (stores have no glob)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            out.append(pattern[i:j + 1] if j > 0 else re.escape("["))
            i = j + 1 if j > 0 else i + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def fixed_prefix(path: str) -> str:
    """The folder part of a glob before its first wildcard: where a store listing starts."""
    parts = path.split("/")
    keep = []
    for p in parts:
        if any(c in p for c in "*?["):
            break
        keep.append(p)
    return "/".join(keep)


def glob_files(fs, pattern: str) -> list:
    """The files (pyarrow FileInfo, sorted by path) on a store filesystem matching a glob path."""
    import pyarrow.fs as pafs

    rx = glob_regex(pattern)
    infos = fs.get_file_info(pafs.FileSelector(fixed_prefix(pattern), recursive=True, allow_not_found=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File and rx.match(i.path)), key=lambda i: i.path)


@dataclass
class Remote:
    """A folder on a pyarrow filesystem: `fs` + `path` (no scheme, e.g. `bucket/runs/tiny`)."""

    fs: object
    path: str

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def sub(self, *parts: str) -> Remote:
        return Remote(self.fs, self.join(*parts))


def read_json(fs, path: str) -> dict | None:
    """A JSON object on a pyarrow filesystem; None when absent or unreadable as JSON."""
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e}") from e


def read_manifest(stage_dir: Path) -> dict | None:
    """A local stage folder's manifest.json; None when absent or unreadable."""
    try:
        return json.loads((stage_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _empty_outputs(stage_dir: Path, manifest: dict) -> None:
    """Object stores keep no empty folders: a declared output that did not come down was one."""
    for rel in (manifest.get("outputs") or {}).values():
        if not (stage_dir / rel).exists():
            (stage_dir / rel).mkdir(parents=True, exist_ok=True)


def copy_file(src_fs, src: str, dst_fs, dst: str) -> None:
    """One file between filesystems (None: local, whose folders are made as needed)."""
    import pyarrow.fs as pafs

    local = pafs.LocalFileSystem()
    if dst_fs is None:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(src, dst, source_filesystem=src_fs or local, destination_filesystem=dst_fs or local)
    except OSError as e:
        raise StorageError(f"cannot copy {src} -> {dst}: {e}") from e


def _list_files(remote: Remote, folder: str) -> dict[str, int]:
    """Relative path -> size of every file under `<remote>/<folder>`."""
    import pyarrow.fs as pafs

    root = remote.join(folder)
    try:
        infos = remote.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"cannot list {root}: {e}") from e
    return {posixpath.relpath(i.path, root): i.size for i in infos if i.type == pafs.FileType.File}


def _upload_tree(remote: Remote, folder: Path, dest: str, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """Every file under local `folder` to `<remote>/<dest>/` (in parallel); (files, bytes) sent."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() not in skip]

    def send(p: Path) -> int:
        copy_file(None, str(p), remote.fs, remote.join(dest, p.relative_to(folder).as_posix()))
        return p.stat().st_size

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        return len(files), sum(pool.map(send, files))


def _put_json(remote: Remote, rel: str, obj: dict) -> None:
    try:
        with remote.fs.open_output_stream(remote.join(rel)) as f:
            f.write(json.dumps(obj, indent=2, default=str).encode())
    except OSError as e:
        raise StorageError(f"cannot write {remote.join(rel)}: {e}") from e


class RunStore:
    """The run directory of one pipeline: `local` (always a folder; the mirror for a URI workdir)
    and `remote` (the durable copy on the store, None for a local workdir)."""

    def __init__(self, pipe):
        workdir = pipe.workdir
        if is_uri(workdir):
            fs, base = open_uri(workdir)
            self.remote: Remote | None = Remote(fs, posixpath.join(base.rstrip("/"), pipe.name))
            self.uri = workdir.split("?", 1)[0].rstrip("/") + "/" + pipe.name
            self.local = Path(pipe.mirror_dir).expanduser().absolute() / pipe.name
        else:
            self.remote, self.uri = None, None
            # Absolute: Ray Train's storage_path (and any actor with another cwd) needs a full path.
            self.local = Path(workdir).expanduser().absolute() / pipe.name

    def describe(self) -> str:
        return f"{self.uri} (local mirror {self.local})" if self.remote else str(self.local)

    # ------------------------------------------------------------------ reading

    def manifest(self, stage: str) -> dict | None:
        """The durable manifest of `stage`: on the store for a URI workdir, else the local one."""
        if self.remote is None:
            return read_manifest(self.local / stage)
        return read_json(self.remote.fs, self.remote.join(stage, MANIFEST))

    def fetch(self, stage: str, only: Callable[[str], bool] | None = None) -> dict | None:
        """Make `<local>/<stage>` hold the store's completed copy (all files, or those whose
        relative path passes `only`). Returns the store's manifest, None if not completed there."""
        if self.remote is None:
            return read_manifest(self.local / stage)
        man = self.manifest(stage)
        if not man or man.get("status") != "completed":
            return None
        here = self.local / stage
        mine = read_manifest(here) or {}
        # Another fingerprint, or the same one completed again (--force): the local copy is not this one.
        if any(mine.get(k) != man.get(k) for k in ("status", "fingerprint", "finished")):
            if only is None:
                self._download_whole(stage)
                _empty_outputs(here, man)
                return man
            shutil.rmtree(here, ignore_errors=True)
        self._download_missing(stage, only)
        if only is None:
            _empty_outputs(here, man)
        return man

    def _download_whole(self, stage: str) -> None:
        import pyarrow.fs as pafs

        tmp = self.local / ".pull" / stage
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            pafs.copy_files(self.remote.join(stage), str(tmp), source_filesystem=self.remote.fs,
                            destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
        except OSError as e:
            raise StorageError(f"cannot download {self.uri}/{stage}: {e}") from e
        if not (tmp / MANIFEST).exists():
            raise StorageError(f"{self.uri}/{stage}: the download has no {MANIFEST}")
        shutil.rmtree(self.local / stage, ignore_errors=True)
        tmp.rename(self.local / stage)

    def _download_missing(self, stage: str, only: Callable[[str], bool] | None) -> None:
        """Files absent locally (or of another size), the manifest last."""
        here = self.local / stage
        wanted = {rel: size for rel, size in _list_files(self.remote, stage).items()
                  if only is None or only(rel)}
        todo = [rel for rel, size in wanted.items()
                if not (here / rel).is_file() or (here / rel).stat().st_size != size]
        todo.sort(key=lambda rel: rel == MANIFEST)
        for rel in todo:
            copy_file(self.remote.fs, self.remote.join(stage, rel), None, str(here / rel))

    # ------------------------------------------------------------------ writing

    def _delete(self, path: str) -> None:
        import pyarrow.fs as pafs

        try:
            if self.remote.fs.get_file_info(path).type != pafs.FileType.NotFound:
                self.remote.fs.delete_dir(path)
        except OSError as e:
            raise StorageError(f"cannot delete {path}: {e}") from e

    def put_file(self, rel: str) -> None:
        """Upload one file of the local run directory (pipeline.resolved.yaml, report.html)."""
        if self.remote is not None and (self.local / rel).is_file():
            copy_file(None, str(self.local / rel), self.remote.fs, self.remote.join(rel))

    def get_file(self, rel: str) -> bool:
        """Download one file of the run directory from the store into the mirror if the mirror lacks it
        (tracking.json, mlflow.db on a fresh machine). True when the mirror has it afterwards."""
        import pyarrow.fs as pafs

        here = self.local / rel
        if self.remote is not None and not here.is_file():
            if self.remote.fs.get_file_info(self.remote.join(rel)).type == pafs.FileType.File:
                copy_file(self.remote.fs, self.remote.join(rel), None, str(here))
        return here.is_file()

    def begin(self, stage: str, manifest: dict) -> None:
        """A stage starts: the store's stale copy goes, a `running` manifest takes its place."""
        if self.remote is None:
            return
        self._delete(self.remote.join(stage))
        _put_json(self.remote, f"{stage}/{MANIFEST}", manifest)

    def publish(self, stage: str, folder: Path, manifest: dict) -> None:
        """Upload a completed stage: outputs first, then manifest.json, with `upload` = {bytes, seconds}
        of the outputs added to it."""
        if self.remote is None:
            return
        t0 = time.perf_counter()
        self._delete(self.remote.join(stage))  # the `running` manifest and any stale objects
        _, sent = _upload_tree(self.remote, folder, stage, skip=(MANIFEST,))
        manifest["upload"] = {"bytes": sent, "seconds": round(time.perf_counter() - t0, 3)}
        _put_json(self.remote, f"{stage}/{MANIFEST}", manifest)

    def publish_failed(self, stage: str, folder: Path, manifest: dict) -> None:
        """Upload a failed stage's log and its `failed` manifest (last)."""
        if self.remote is None:
            return
        self._delete(self.remote.join(stage))
        _upload_tree(self.remote, folder, stage, skip=(MANIFEST,))
        _put_json(self.remote, f"{stage}/{MANIFEST}", manifest)

    # ------------------------------------------------------------------ resumable work

    def work_remote(self, work_name: str) -> Remote | None:
        """Where a stage's resumable state (Ray Train storage) lives on the store; None if local."""
        return self.remote.sub(".work", work_name) if self.remote else None

    def drop_work(self, work_name: str) -> None:
        if self.remote is not None:
            self._delete(self.remote.join(".work", work_name))


# ---------------------------------------------------------------- versioned checkpoint folders

LATEST = "latest.json"


def push_checkpoint(remote: Remote, folder: Path, tag: str, prefix: str = "ckpt") -> int:
    """Upload a complete local checkpoint folder as `<remote>/<prefix>-<tag>/`, then point
    `<remote>/latest.json` at it (LAST: a crash mid-upload leaves the previous pointer and folder
    intact), then delete older versions. For stages that checkpoint outside Ray Train (PPO/GRPO).
    Returns the bytes sent."""
    name = f"{prefix}-{tag}"
    files, sent = _upload_tree(remote, Path(folder), name)
    _put_json(remote, LATEST, {"folder": name, "files": files, "bytes": sent})
    _drop_versions(remote, f"{prefix}-", keep=name)
    return sent


def pull_checkpoint(remote: Remote, dest: Path) -> bool:
    """Download the folder `<remote>/latest.json` points at into `dest` (absent before; filled via a
    temporary folder renamed into place). False when the store holds no checkpoint."""
    latest = read_json(remote.fs, remote.join(LATEST))
    if not latest:
        return False
    files = _list_files(remote, latest["folder"])
    if len(files) != latest.get("files", len(files)):
        raise StorageError(f"{remote.join(latest['folder'])}: {len(files)} files on the store, "
                           f"latest.json says {latest['files']}")
    tmp = Path(dest).with_name(Path(dest).name + ".pull")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        copy_file(remote.fs, remote.join(latest["folder"], rel), None, str(tmp / rel))
    tmp.rename(dest)
    return True


def _drop_versions(remote: Remote, prefix: str, keep: str) -> None:
    from pyarrow.fs import FileSelector, FileType

    for info in remote.fs.get_file_info(FileSelector(remote.path, allow_not_found=True)):
        if info.type == FileType.Directory and info.base_name.startswith(prefix) and info.base_name != keep:
            remote.fs.delete_dir(info.path)


def report_files(rel: str) -> bool:
    """What the run report reads from a stage folder: its top-level files and curate's rejected/."""
    return "/" not in rel or rel.startswith("rejected/")
