"""The built-in `python-docs` corpus with `include_source`: a class's source found from one parse of its
file (llmray.data.pydocs._class_starts) is exactly what `inspect.getsource` returns, failures included."""

from __future__ import annotations

import functools
import importlib
import inspect

from llmray.data.pydocs import iter_docs

# Modules with nested classes, decorated classes and a classmethod subclass (abc.abstractclassmethod,
# which inspect.getsource refuses: its unwrap() reaches a descriptor).
MODULES = ["abc", "argparse", "collections", "dataclasses", "json", "string"]


def _expected_text(rec: dict) -> str:
    obj = functools.reduce(getattr, rec["qualname"].split("."), importlib.import_module(rec["module"]))
    try:
        return f"{rec['doc']}\n\n{inspect.getsource(obj)}"
    except (OSError, TypeError):
        return rec["doc"]


def test_class_sources_equal_inspect_getsource_on_stdlib_modules():
    recs = [r for r in iter_docs(MODULES, include_source=True) if r["kind"] != "module"]
    classes = [r for r in recs if r["kind"] == "class"]
    assert len(classes) >= 20, len(classes)
    mismatched = [r["id"] for r in recs if r["text"] != _expected_text(r)]
    assert mismatched == []
    # Both outcomes occur: source appended, and the doc alone where inspect has none to give.
    with_source = [r for r in classes if r["text"] != r["doc"]]
    assert with_source and len(with_source) < len(classes)
    assert "class OrderedDict(dict):" in next(r["text"] for r in classes if r["qualname"] == "OrderedDict")


def test_signatures_carry_no_memory_address():
    """A default printed by its address differs in every process; the records must not (the corpus and the
    built-in data sets made from it are the same in every run)."""
    recs = {r["qualname"]: r for r in iter_docs(["shutil", "functools"]) if r["kind"] != "module"}
    assert "copy_function=<function copy2>" in recs["copytree"]["signature"]
    assert not [r["id"] for r in recs.values() if " at 0x" in r["signature"]]
