"""The built-in offline corpus: docstrings (and optionally source) of the installed Python's stdlib.

Real English and code text that every machine has, deterministic for a given Python.
Data flow: sorted stdlib module names --import (side-effect-free allowlist)--> public
functions, classes and methods --inspect.getdoc / getsource--> records
{id, module, qualname, kind, signature, doc, text}. The `python-docs` curate source and the
built-in SFT/preference/RL/red-team data sets are all derived from `iter_docs`.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import linecache
import re
import sys
import warnings
from collections.abc import Iterator

# Modules with import-time side effects, heavy GUI/test trees, or platform-only code.
_SKIP_PREFIXES = (
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
    "venv", "pydoc_data", "msilib", "winreg", "winsound", "_", "xxsubtype", "xxlimited", "nt", "msvcrt",
    "curses", "readline", "crypt", "nis", "spwd", "ossaudiodev", "tty", "pty", "sre_", "distutils", "imp",
    "asynchat", "asyncore", "smtpd", "telnetlib", "cgi", "cgitb", "nntplib", "sndhdr", "imghdr", "pipes",
    "mailcap", "audioop", "chunk", "uu", "xdrlib", "aifc", "sunau", "tabnanny",
)


def stdlib_modules() -> list[str]:
    """Top-level stdlib module names, sorted, without side-effect or platform-only ones."""
    names = getattr(sys, "stdlib_module_names", ())
    return sorted(n for n in names if not n.startswith(_SKIP_PREFIXES))


def _members(mod) -> Iterator[tuple[str, str, object]]:
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj):
            yield name, "class", obj
            for mname, mobj in sorted(vars(obj).items()):
                if not mname.startswith("_") and (inspect.isfunction(mobj) or inspect.ismethoddescriptor(mobj)):
                    yield f"{name}.{mname}", "method", mobj
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield name, "function", obj


# A default printed by its address ("<function copy2 at 0x7f...>") differs in every process: records keep
# "<function copy2>", so the corpus and every data set made from it are the same in every run.
_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+>")


def _signature(obj) -> str:
    try:
        return _ADDRESS_RE.sub(">", str(inspect.signature(obj)))
    except (TypeError, ValueError):
        return "(...)"


@functools.lru_cache(maxsize=4)
def _class_starts(path: str) -> dict[str, int]:
    """Qualname -> 0-based first line (its first decorator's, if any) of every class in one source file.

    `inspect.getsource(cls)` parses the whole module for each class it is asked for (its `_ClassFinder`):
    ~80% of the `include_source` corpus's read time. One parse per file here, walked as `_ClassFinder`
    walks it (functions add `<name>.<locals>`, the first match wins), gives the same lines."""
    starts: dict[str, int] = {}

    def walk(node: ast.AST, stack: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                walk(child, [*stack, child.name, "<locals>"])
            elif isinstance(child, ast.ClassDef):
                first = child.decorator_list[0].lineno if child.decorator_list else child.lineno
                starts.setdefault(".".join([*stack, child.name]), first - 1)
                walk(child, [*stack, child.name])
            else:
                walk(child, stack)

    walk(ast.parse("".join(linecache.getlines(path))), [])
    return starts


def _source(obj, kind: str) -> str:
    """inspect.getsource(obj), with a class's start found from one parse of its file (`_class_starts`)."""
    if kind == "class":
        obj = inspect.unwrap(obj)  # as getsourcelines does (a classmethod subclass unwraps to a descriptor)
        path = inspect.getsourcefile(obj)
        lnum = _class_starts(path).get(obj.__qualname__) if path else None
        if lnum is not None:
            return "".join(inspect.getblock(linecache.getlines(path)[lnum:]))
    return inspect.getsource(obj)


def iter_docs(modules: list[str] | None = None, include_source: bool = False,
              min_chars: int = 40) -> Iterator[dict]:
    """One record per documented public function/class/method (and one per module docstring)."""
    for modname in modules or stdlib_modules():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                mod = importlib.import_module(modname)
            except Exception:  # noqa: BLE001 - optional or platform-specific modules
                continue
        mdoc = inspect.getdoc(mod)
        if mdoc and len(mdoc) >= min_chars:
            yield {"id": f"python-docs:{modname}", "module": modname, "qualname": modname, "kind": "module",
                   "signature": "", "doc": mdoc, "text": mdoc}
        for qualname, kind, obj in _members(mod):
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < min_chars:
                continue
            sig = _signature(obj) if kind != "class" else ""
            text = doc
            if include_source:
                try:
                    text = f"{doc}\n\n{_source(obj, kind)}"
                except (OSError, TypeError):
                    pass
            yield {"id": f"python-docs:{modname}.{qualname}", "module": modname, "qualname": qualname,
                   "kind": kind, "signature": sig, "doc": doc, "text": text}
