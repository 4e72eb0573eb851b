"""Code repositories for `type: repo` sources: one document per file, with licence and file rules.

A repository is a folder (a Git work tree: the files `git ls-files` lists; a plain folder: every
file outside `.git`), or a `.tar.gz`/`.tgz`/`.zip` archive, local or on an object store (archives
are streamed from pyarrow.fs: a tar is read twice, once for its listing and licence files (`survey`)
and once for the code, so no repository is unpacked or held in memory). Data flow per repository
(one Ray read task each):
  licence files at the top level (a single top-level folder of an archive counts as the top)
  --`licenses.detect`--> the repository's SPDX id --> every file:
  `license` removes all files of a repository whose licence is not allowed (files are not read);
  `code_filter` removes, in this order, vendored paths, generated/lock/minified names, unknown
  extensions or languages not asked for, files above `max_file_bytes` (not read), binary files,
  generated markers, long lines, minified code (mean line length), low alphanumeric fraction;
  kept files become rows with meta {repo, path, language, size, license}.
Rules and defaults follow The Stack (Kocetkov et al. 2022) / StarCoder (Li et al. 2023):
max line length 1000, mean line length 100, alphanumeric fraction 0.25, files up to 1 MB.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from llmray.curate import licenses
from llmray.curate.sources import ARCHIVES, expand_repos, repo_name, uri_path  # noqa: F401 - re-exported

_SNIFF = 8192
_GENERATED_NAMES = ("*.min.js", "*.min.css", "*_pb2.py", "*_pb2_grpc.py", "*.pb.go", "package-lock.json",
                    "yarn.lock", "poetry.lock", "Cargo.lock", "pnpm-lock.yaml", "*.map")
LANGUAGES = {
    ".py": "Python", ".pyi": "Python", ".js": "JavaScript", ".mjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".java": "Java", ".c": "C", ".h": "C", ".cc": "C++",
    ".cpp": "C++", ".cxx": "C++", ".hpp": "C++", ".hh": "C++", ".cs": "C#", ".go": "Go", ".rs": "Rust",
    ".rb": "Ruby", ".php": "PHP", ".swift": "Swift", ".kt": "Kotlin", ".kts": "Kotlin", ".scala": "Scala",
    ".m": "Objective-C", ".mm": "Objective-C++", ".r": "R", ".jl": "Julia", ".lua": "Lua", ".pl": "Perl",
    ".pm": "Perl", ".hs": "Haskell", ".ml": "OCaml", ".ex": "Elixir", ".exs": "Elixir", ".erl": "Erlang",
    ".clj": "Clojure", ".dart": "Dart", ".vue": "Vue", ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell",
    ".ps1": "PowerShell", ".sql": "SQL", ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".scss": "SCSS",
    ".md": "Markdown", ".rst": "reStructuredText", ".tex": "TeX", ".json": "JSON", ".yaml": "YAML",
    ".yml": "YAML", ".toml": "TOML", ".xml": "XML", ".proto": "Protocol Buffer", ".f90": "Fortran",
    ".zig": "Zig", ".nim": "Nim", ".cmake": "CMake", ".ipynb": "Jupyter Notebook",
}
FILE_NAMES = {"Makefile": "Makefile", "Dockerfile": "Dockerfile", "CMakeLists.txt": "CMake"}


def language_of(path: str) -> str | None:
    p = PurePosixPath(path)
    return FILE_NAMES.get(p.name) or LANGUAGES.get(p.suffix.lower())


# ---------------------------------------------------------------- walking a repository


class Entry:
    """One file of a repository: its path inside the repository, size, and a way to read it."""

    __slots__ = ("path", "size", "_read")

    def __init__(self, path: str, size: int, read):
        self.path, self.size, self._read = path, size, read

    def read(self, limit: int | None = None) -> bytes:
        data = self._read()
        return data if limit is None else data[:limit]


def _folder(root: str) -> Iterator[Entry]:
    if os.path.isdir(os.path.join(root, ".git")):
        out = subprocess.run(["git", "-C", root, "ls-files", "-z"], capture_output=True, check=True).stdout
        paths = sorted(p for p in out.decode("utf-8", "surrogateescape").split("\0") if p)
    else:
        paths = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                       for d, dirs, fs in os.walk(root) if ".git" not in d.split(os.sep) for f in fs)
    for p in paths:
        full = os.path.join(root, p)
        if os.path.isfile(full) and not os.path.islink(full):
            yield Entry(p, os.path.getsize(full), lambda full=full: Path(full).read_bytes())


def _tar(uri: str) -> Iterator[Entry]:
    import tarfile

    from llmray.curate.sources import open_stream

    # Stream mode: a member's bytes can be read only while it is the current one, which holds because
    # the consumer reads (or skips) each entry before asking for the next.
    with open_stream(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        for m in tf:
            if m.isfile():
                yield Entry(m.name, m.size, lambda m=m: tf.extractfile(m).read())


def _zip(uri: str) -> Iterator[Entry]:
    import zipfile

    from llmray.curate.sources import open_random_access

    with open_random_access(uri) as f, zipfile.ZipFile(f) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if not info.is_dir():
                yield Entry(info.filename, info.file_size, lambda info=info: zf.read(info))


def _entries(uri: str) -> Iterator[Entry]:
    if uri_path(uri).endswith(".zip"):
        return _zip(uri)
    if uri_path(uri).endswith((".tar.gz", ".tgz")):
        return _tar(uri)
    return _folder(uri)


def _safe(path: str) -> bool:
    return not path.startswith("/") and ".." not in path.split("/")


def top_folder(uri: str) -> str:
    """The single top-level folder of an archive ("" for a folder or an archive without one)."""
    if not uri_path(uri).endswith(ARCHIVES):
        return ""
    tops, nested = set(), True
    for e in _entries(uri):
        tops.add(e.path.split("/", 1)[0])
        nested = nested and "/" in e.path
        if len(tops) > 1 or not nested:
            return ""
    return next(iter(tops)) + "/" if tops else ""


def walk(uri: str, top: str = "") -> Iterator[Entry]:
    """Files of one repository with paths relative to its top (`top`, from `top_folder`, removed)."""
    for e in _entries(uri):
        if _safe(e.path):
            e.path = e.path.removeprefix(top)
            yield e


def repo_license(uri: str, top: str = "") -> tuple[str | None, dict]:
    """(the repository's licence, {licence file: SPDX id or None}) from its top-level licence files."""
    found = {e.path: licenses.detect(e.read(200_000).decode("utf-8", "replace"))
             for e in walk(uri, top) if "/" not in e.path and licenses.is_license_file(e.path)}
    return licenses.combine(found), found


def survey(uri: str) -> tuple[str, str | None, dict]:
    """(`top_folder`, `repo_license`) of a repository in one pass over its entries: the licence files
    of both candidate tops (the archive root and a single top-level folder) are read as they pass."""
    if not uri_path(uri).endswith(ARCHIVES):
        return "", *repo_license(uri)
    tops, nested = set(), True
    texts: dict[str, str] = {}  # licence-file path (at depth 1 or 2) -> its text
    for e in _entries(uri):
        tops.add(e.path.split("/", 1)[0])
        nested = nested and "/" in e.path
        if e.path.count("/") <= 1 and _safe(e.path) and licenses.is_license_file(e.path.rsplit("/", 1)[-1]):
            texts[e.path] = e.read(200_000).decode("utf-8", "replace")
    top = next(iter(tops)) + "/" if nested and len(tops) == 1 else ""
    found = {p.removeprefix(top): licenses.detect(t) for p, t in texts.items()
             if p.startswith(top) and "/" not in p.removeprefix(top)}
    return top, licenses.combine(found), found


# ---------------------------------------------------------------- file rules


def path_reason(path: str, size: int, cfg: dict) -> str | None:
    """Rules decided from the path and size alone (the file is not read)."""
    parts = path.lower().split("/")
    for v in cfg["vendored"]:
        if v.rstrip("/").lower() in parts[:-1]:
            return f"vendored: under {v!r}"
    name = parts[-1]
    if any(fnmatch.fnmatch(name, g.lower()) for g in _GENERATED_NAMES):
        return f"generated: file name {name!r}"
    lang = language_of(path)
    if lang is None and not cfg["unknown_extensions"]:
        return f"unknown_extension: {PurePosixPath(path).suffix or '(none)'}"
    if cfg["languages"] and lang not in cfg["languages"]:
        return f"language: {lang} not in {cfg['languages']}"
    if cfg["max_file_bytes"] is not None and size > cfg["max_file_bytes"]:
        return f"too_large: {size} bytes > {cfg['max_file_bytes']}"
    return None


def content_reason(data: bytes, cfg: dict) -> tuple[str | None, str]:
    """(reason or None, decoded text) for the content rules."""
    if cfg["binary"] and b"\0" in data[:_SNIFF]:
        return "binary: NUL byte", ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return (f"binary: not UTF-8 ({e.reason} at byte {e.start})", "") if cfg["binary"] else (None, "")
    lines = text.splitlines() or [""]
    head = "\n".join(lines[:5]).lower()
    if hit := next((g for g in cfg["generated"] if g.lower() in head), None):
        return f"generated: {hit!r} in the first lines", text
    longest = max(map(len, lines))
    if cfg["max_line_length"] is not None and longest > cfg["max_line_length"]:
        return f"long_lines: a line of {longest} characters > {cfg['max_line_length']}", text
    mean = sum(map(len, lines)) / len(lines)
    if cfg["max_mean_line_length"] is not None and mean > cfg["max_mean_line_length"]:
        return f"minified: mean line length {mean:.0f} > {cfg['max_mean_line_length']}", text
    if cfg["min_alnum_fraction"] is not None and text:
        frac = sum(c.isalnum() for c in text) / len(text)
        if frac < cfg["min_alnum_fraction"]:
            return f"alnum_fraction: {frac:.2f} < {cfg['min_alnum_fraction']}", text
    return None, text


def read_repo(rows, uri: str, rel: str, task: dict, clean_cfg) -> Iterator[int]:
    """Rows for one repository's files; yields the file number after each."""
    lic_cfg, code_cfg = task.get("license"), task.get("code_filter")
    name = repo_name(uri)
    # The licence must be known before the first file: an archive stream is read again (its
    # listing and licence files are small) rather than held in memory.
    top, lic, _ = survey(uri)
    ok = lic_cfg is None or licenses.allowed(lic, lic_cfg["allow"], lic_cfg["allow_unknown"])
    for n, e in enumerate(walk(uri, top), start=1):
        meta = {"repo": name, "path": e.path, "language": language_of(e.path), "size": e.size, "license": lic}
        doc_id = f"{rows.task['source']}/{name}/{e.path}"
        if not ok:
            rows.add(doc_id, e.path, name, n, meta, drop="license", why=f"not_allowed: {lic or 'unknown'}")
        elif code_cfg and (why := path_reason(e.path, e.size, code_cfg)):
            rows.add(doc_id, e.path, name, n, meta, drop="code_filter", why=why)
        else:
            why, text = content_reason(e.read(), code_cfg or _NO_RULES)
            if why:
                rows.add(doc_id, text or e.path, name, n, meta, drop="code_filter", why=why)
            elif not text and e.size and not code_cfg:
                rows.quarantine(name, n, "undecodable_bytes", f"{e.path}: not UTF-8", e.read(500))
            else:
                rows.add(doc_id, text, name, n, meta)
        yield n


_NO_RULES = {"binary": False, "generated": [], "max_line_length": None, "max_mean_line_length": None,
             "min_alnum_fraction": None}
