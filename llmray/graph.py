"""The stage DAG: reference checks, cycle detection and a deterministic topological order.

Stages name their inputs by stage name (`data: corpus`, `init: chat`). Each kind's
Config declares which fields are references and which kinds they may point at
(`StageConfig.INPUTS`); this module turns that into edges and reports every problem
with the field path that caused it. `serve.models` is checked here too: its stage
entries must name stages, its external models must not take a stage's name.
"""

from __future__ import annotations

from typing import Any

from llmray.serve_config import served_name


def edges(pipe) -> dict[str, list[str]]:
    """Stage name -> the stage names it reads from (declaration order, no duplicates)."""
    out: dict[str, list[str]] = {}
    for name, cfg in pipe.stages.items():
        deps: list[str] = []
        for refs in cfg.input_refs().values():
            deps.extend(r for r in refs if r not in deps)
        out[name] = deps
    return out


def check_graph(pipe) -> list[tuple[str, str, Any]]:
    """Every dangling reference, wrong-kind reference and cycle, as config error items."""
    problems: list[tuple[str, str, Any]] = []
    for name, cfg in pipe.stages.items():
        for field, refs in cfg.input_refs().items():
            allowed = cfg.INPUTS[field]
            for ref in refs:
                path = f"stages.{name}.{field}"
                if ref not in pipe.stages:
                    problems.append((path, f"no stage named {ref!r} in this pipeline", ref))
                elif ref == name:
                    problems.append((path, "a stage cannot read its own output", ref))
                elif pipe.stages[ref].kind not in allowed:
                    kind = pipe.stages[ref].kind
                    problems.append(
                        (path, f"{ref!r} is a {kind} stage; {field} must name a stage of kind "
                               f"{' or '.join(allowed)}", ref)
                    )
    if problems:
        return problems
    cycle = find_cycle(edges(pipe))
    if cycle:
        problems.append((f"stages.{cycle[0]}", "stage references form a cycle: " + " -> ".join(cycle), cycle[0]))
    if pipe.serve is not None:
        problems.extend(_serve_problems(pipe))
    return problems


def _serve_problems(pipe) -> list[tuple[str, str, Any]]:
    """serve.models: stage entries name stages; external names are not stage names; default is served."""
    problems: list[tuple[str, str, Any]] = []
    for i, item in enumerate(pipe.serve.models):
        if isinstance(item, str) and item not in pipe.stages:
            problems.append((f"serve.models.{i}", f"no stage named {item!r} in this pipeline", item))
        elif not isinstance(item, str) and item.name in pipe.stages:
            problems.append((f"serve.models.{i}.name", f"{item.name!r} is a stage of this pipeline; give the "
                                                       "external model another name", item.name))
    names = [served_name(m) for m in pipe.serve.models]
    if pipe.serve.default and pipe.serve.default not in names:
        problems.append(("serve.default", "the default model must be one of serve.models (a stage or external "
                                          "model name)", pipe.serve.default))
    for name, stage in pipe.serve.names.items():  # served names with versions (llmray promote)
        if stage not in pipe.stages:
            problems.append((f"serve.names.{name}", f"no stage named {stage!r} in this pipeline", stage))
        elif name in names:
            problems.append((f"serve.names.{name}", f"{name!r} is already in serve.models; pick another name", name))
    return problems


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def topo_order(pipe) -> list[str]:
    """Stages in dependency order; ties keep the file's order."""
    graph = edges(pipe)
    done: list[str] = []
    seen: set[str] = set()

    def visit(node: str):
        if node in seen:
            return
        seen.add(node)
        for dep in graph[node]:
            visit(dep)
        done.append(node)

    for node in graph:
        visit(node)
    return done


def ancestors(pipe, names: list[str]) -> set[str]:
    """The named stages and everything they (transitively) read from."""
    graph = edges(pipe)
    out: set[str] = set()
    todo = list(names)
    while todo:
        node = todo.pop()
        if node in out:
            continue
        out.add(node)
        todo.extend(graph[node])
    return out
