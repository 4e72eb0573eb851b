"""The built-in offline corpus: docstrings (and optionally source) of the installed Python's stdlib.

Real English and code text that every machine has, deterministic for a given Python.
Data flow: sorted stdlib module names --import (side-effect-free allowlist)--> public
functions, classes and methods --inspect.getdoc / getsource--> records
{id, module, qualname, kind, signature, doc, text}. The `python-docs` curate source and the
built-in SFT/preference/RL/red-team data sets are all derived from `iter_docs`.
"""

from __future__ import annotations

import importlib
import inspect
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


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


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
                    text = f"{doc}\n\n{inspect.getsource(obj)}"
                except (OSError, TypeError):
                    pass
            yield {"id": f"python-docs:{modname}.{qualname}", "module": modname, "qualname": qualname,
                   "kind": kind, "signature": sig, "doc": doc, "text": text}
