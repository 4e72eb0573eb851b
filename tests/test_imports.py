"""The package's import graph: every module imports alone, and no import cycles.

Imports point one way (config schema and stage API at the bottom, subsystems above them, stage
kinds above those, the runner and CLI on top). A function-local import is still an edge here: a
cycle hidden inside a function is a cycle. No Ray, no models: parsing and forked imports, seconds.
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import sys
from pathlib import Path

import pytest

import llmray

ROOT = Path(llmray.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for info in pkgutil.walk_packages(llmray.__path__, "llmray."):
        rel = info.name.split(".")[1:]
        path = ROOT.joinpath(*rel)
        out[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    out["llmray"] = ROOT / "__init__.py"
    return out


def _edges(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of llmray that `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    mods = _modules()
    graph = {name: _edges(name, path, set(mods)) for name, path in mods.items()}
    assert len(graph) > 100
    assert "llmray.runner" in graph["llmray.cli"]  # function-local imports count as edges
    assert _cycles(graph) == [], "import cycles (each a set of modules that import each other around a loop)"


def _import_each_alone(names: list[str]) -> tuple[int, int]:
    """Fork; for each name the child forgets every llmray module, then imports that one alone (the
    third-party libraries it loaded stay: they are not under test, and importing them again for every
    module cost most of this test's time). Returns (pid, read end of a pipe carrying the failures)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        failed = []
        for name in names:
            for loaded in [m for m in sys.modules if m == "llmray" or m.startswith("llmray.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - any failure to import alone
                failed.append(name)
        os.write(write, "\n".join(failed).encode())
        os._exit(0)
    os.close(write)
    return pid, read


@pytest.mark.integration  # a subprocess per module (~4 s): not in the fast tier
def test_every_module_imports_alone():
    """Each module in a process in which no other llmray module is imported: a module that works only
    after some other llmray module was imported first fails here. Two forked children (the machine's
    two cores) take every other module each."""
    names = sorted(_modules())
    children = [_import_each_alone(names[i::2]) for i in range(2)]
    failed = []
    for pid, read in children:
        with os.fdopen(read, "rb") as f:
            failed += [n for n in f.read().decode().split("\n") if n]
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert len(names) > 100 and failed == []
