"""The run report: one self-contained HTML page showing what every stage of a run did.

    llmray report pipeline.yaml [--watch 10]   -> writes <run>/report.html  (llmray.cli.cmd_report)

Data flow: run directory (manifests, metrics.jsonl, rejected samples) --build.collect--> RunView
--html.render_page (charts from svg.py)--> HTML. The serve app mounts the same page at `/`:
`render_report(run_dir, playground=playground_html(model_ids))` puts the compare playground
(`POST /v1/compare`) on top. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmray.report.build import RunView, collect
from llmray.report.html import render_page
from llmray.report.playground import playground_html

__all__ = ["RunView", "collect", "playground_html", "render_report", "write_report"]


def render_report(run_dir: Path, pipe=None, playground: str = "", fingerprints: dict | None = None) -> str:
    """The report page for `run_dir` as an HTML string. `pipe` (optional, the validated pipeline)
    orders stages by dependency, `fingerprints` (the runner's, for that pipeline) flags stale ones;
    `playground` is HTML put above the stages."""
    return render_page(collect(Path(run_dir), pipe, fingerprints), playground=playground)


def write_report(run_dir: Path, pipe=None, out: Path | None = None,
                 fingerprints: dict | None = None) -> tuple[Path, RunView]:
    """Write the page atomically (a reloading browser never sees half a file). Returns (path, run)."""
    run_dir = Path(run_dir)
    run = collect(run_dir, pipe, fingerprints)
    out = Path(out) if out else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(render_page(run), encoding="utf-8")
    tmp.replace(out)
    return out, run
