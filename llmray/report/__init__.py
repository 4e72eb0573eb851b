"""The run report: one self-contained HTML page showing what every stage of a run did.

    llmray report pipeline.yaml [--watch 10]   -> writes <run>/report.html

Data flow: run directory (manifests, metrics.jsonl, rejected samples) --build.collect--> RunView
--html.render_page (charts from svg.py)--> HTML. The serve app mounts the same page at `/`:
`render_report(run_dir, playground=playground_html(model_ids))` puts the compare playground
(`POST /v1/compare`) on top. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from llmray.report.build import RunView, collect
from llmray.report.html import render_page
from llmray.report.playground import playground_html

__all__ = ["RunView", "cmd_report", "collect", "playground_html", "render_report", "write_report"]


def render_report(run_dir: Path, pipe=None, playground: str = "") -> str:
    """The report page for `run_dir` as an HTML string. `pipe` (optional, the validated pipeline)
    orders stages by dependency and flags stale ones; `playground` is HTML put above the stages."""
    return render_page(collect(Path(run_dir), pipe), playground=playground)


def write_report(run_dir: Path, pipe=None, out: Path | None = None) -> tuple[Path, RunView]:
    """Write the page atomically (a reloading browser never sees half a file). Returns (path, run)."""
    run_dir = Path(run_dir)
    run = collect(run_dir, pipe)
    out = Path(out) if out else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(render_page(run), encoding="utf-8")
    tmp.replace(out)
    return out, run


def add_arguments_report(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--watch",
        type=float,
        default=0,
        metavar="SECONDS",
        help="rewrite the report every SECONDS until interrupted (the page reloads itself "
        "while a stage is running)",
    )
    p.add_argument("--out", default=None, help="where to write the page (default <run>/report.html)")


def cmd_report(pipe, args) -> int:
    from llmray.runner import sync_local
    from llmray.storage import report_files

    out = getattr(args, "out", None)
    watch = getattr(args, "watch", 0) or 0
    while True:
        root = sync_local(pipe, only=report_files)  # a URI workdir: manifests, metrics, logs from the store
        path, run = write_report(root, pipe, Path(out) if out else None)
        counts = ", ".join(f"{n} {k}" for k, n in sorted(run.counts().items()))
        print(f"[llmray] report: {path} ({counts})", flush=True)
        if watch <= 0:
            return 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0
