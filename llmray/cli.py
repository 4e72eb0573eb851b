"""The `llmray` command: validate, plan, run, status (and serve/compare/report from their modules).

Every command takes the pipeline file and then dotted overrides (`workdir=/tmp/r`,
`stages.base.train.steps=50`), applied before validation. A config error prints
`file:line: field.path: message (got value)` and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

from llmray.config import ConfigError
from llmray.pipeline import load_pipeline

# command -> "module:function"; each function takes (pipe, args) and returns an exit code.
# Modules may also define `add_arguments_<command>(parser)` for extra flags.
COMMANDS: dict[str, str] = {
    "validate": "llmray.cli:cmd_validate",
    "plan": "llmray.cli:cmd_plan",
    "run": "llmray.cli:cmd_run",
    "status": "llmray.cli:cmd_status",
    "schema": "llmray.cli:cmd_schema",
    "serve": "llmray.serve.launch:cmd_serve",
    "compare": "llmray.serve.launch:cmd_compare",
    "report": "llmray.cli:cmd_report",
    "promote": "llmray.serve.promote:cmd_promote",
    "rollback": "llmray.serve.promote:cmd_rollback",
}

HELP = {
    "validate": "check the pipeline file and stage references",
    "plan": "show the stage order and what is cached / will run",
    "run": "run the pipeline (cached stages are skipped)",
    "status": "show each stage's state in the run directory",
    "schema": "print the pipeline file reference (Markdown, from the pydantic schema)",
    "serve": "serve the stages' models on Ray Serve (OpenAI-compatible)",
    "compare": "ask several served stage models the same prompt",
    "report": "write <run>/report.html",
    "promote": "put a stage's model behind a served name of the running server (canary, auto rollback)",
    "rollback": "return a served name to its previous version",
}


def cmd_validate(pipe, args) -> int:
    print(f"{args.file}: OK — pipeline {pipe.name!r}, {len(pipe.stages)} stages: "
          + ", ".join(f"{n} ({c.kind})" for n, c in pipe.stages.items()))
    return 0


def _widths(pipe) -> tuple[int, int]:
    """Column widths for stage names and kinds (at least the old fixed 14 and 10)."""
    return (max([14, *(len(n) for n in pipe.stages)]), max([10, *(len(c.kind) for c in pipe.stages.values())]))


def cmd_plan(pipe, args) -> int:
    from llmray.runner import plan, run_store

    print(f"run directory: {run_store(pipe).describe()}")
    w = _widths(pipe)
    for i, item in enumerate(plan(pipe), 1):
        deps = f" <- {', '.join(item.deps)}" if item.deps else ""
        print(f"{i:2d}. {item.name:<{w[0]}} {item.kind:<{w[1]}} {item.state:<9} {item.fingerprint[:12]}{deps}")
    return 0


def add_arguments_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", default="", help="comma-separated stages to run (plus what they need)")
    p.add_argument("--force", default="", help="comma-separated stages to rerun even if cached")
    p.add_argument("--verbose", action="store_true",
                   help="show everything on the console, Ray's own log lines and warnings included")


def cmd_run(pipe, args) -> int:
    from llmray.runner import StageFailed, run_pipeline, run_store
    from llmray.tracking import TrackingUnavailable
    from llmray.tracking.console import Console, chatter_filtered

    t0 = time.time()
    stages = [s for s in args.stages.split(",") if s] or None
    force = [s for s in args.force.split(",") if s]
    # A live line per running stage; Ray's chatter goes to the stage's log.txt unless --verbose.
    console = Console(sys.stdout, interval_s=pipe.tracking.console_interval_s)
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        with chatter_filtered(console, run_store(pipe).local, verbose=args.verbose):
            try:
                run_pipeline(pipe, stages=stages, force=force, echo=console.echo, listeners=[console])
            finally:
                if not ray_before:  # inside the filter: Ray prints its workers' last lines as it shuts down
                    _disconnect_ray()
    except TrackingUnavailable as e:
        print(f"[llmray] {e}", file=sys.stderr)
        return 1
    except StageFailed as e:
        print(f"[llmray] {e}", file=sys.stderr)
        return 1
    except KeyError as e:
        print(f"[llmray] {e.args[0]}", file=sys.stderr)
        return 2
    finally:
        console.close()
    print(f"[llmray] wall time {time.time() - t0:.1f}s", flush=True)
    if pipe.serve is not None and pipe.serve.promote.mode == "auto":
        from llmray.serve.promote import after_run

        after_run(pipe, echo=lambda m: print(m, flush=True))
    return 0


def _disconnect_ray() -> None:
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def cmd_status(pipe, args) -> int:
    from llmray.runner import run_store, status_table

    print(f"run directory: {run_store(pipe).describe()}")
    w = _widths(pipe)
    for row in status_table(pipe):
        el = f"{row['elapsed_s']:.1f}s" if row["elapsed_s"] is not None else "-"
        err = f"  {row['error']}" if row["error"] else ""
        print(f"{row['stage']:<{w[0]}} {row['kind']:<{w[1]}} {row['state']:<9} {row['fingerprint']} {el:>8}{err}")
    store = run_store(pipe)
    for name, cfg in pipe.stages.items():  # eval and align stages: their model tables
        md = ((store.manifest(name) or {}).get("metrics") or {}).get("table_md") if cfg.kind in ("eval", "align") else None
        if md:
            print(f"\n{name} ({cfg.kind}):\n{md}", end="")
    return 0


def cmd_schema(pipe, args) -> int:
    from llmray.schema_doc import reference_markdown

    print(reference_markdown())
    return 0


def add_arguments_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--watch", type=float, default=0, metavar="SECONDS",
                   help="rewrite the report every SECONDS until interrupted (the page reloads itself "
                        "while a stage is running)")
    p.add_argument("--out", default=None, help="where to write the page (default <run>/report.html)")


def cmd_report(pipe, args) -> int:
    from pathlib import Path

    from llmray.report import write_report
    from llmray.runner import fingerprints, sync_local
    from llmray.storage import report_files

    out = getattr(args, "out", None)
    watch = getattr(args, "watch", 0) or 0
    while True:
        root = sync_local(pipe, only=report_files)  # a URI workdir: manifests, metrics, logs from the store
        path, run = write_report(root, pipe, Path(out) if out else None, fingerprints=fingerprints(pipe))
        counts = ", ".join(f"{n} {k}" for k, n in sorted(run.counts().items()))
        print(f"[llmray] report: {path} ({counts})", flush=True)
        if watch <= 0:
            return 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0


def _resolve(spec: str):
    mod, fn = spec.split(":")
    module = importlib.import_module(mod)
    return module, getattr(module, fn)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmray", description="One pipeline.yaml from raw text to a served LLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, help=HELP.get(name, ""))
        p.add_argument("file", help="the pipeline file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.base.train.steps=50")
        module = importlib.import_module(spec.split(":")[0])
        adder = getattr(module, f"add_arguments_{name}", None)
        if adder:
            adder(p)
    return parser


def _rollback_name(parser, args) -> None:
    """`llmray rollback FILE NAME` (the documented form) as well as `--to NAME`: the one word
    without `=` among the positionals is the served name, the rest are overrides."""
    bare = [o for o in args.overrides if "=" not in o]
    if len(bare) > 1 or (bare and args.to and bare[0] != args.to):
        parser.error(f"rollback takes one served name, got {', '.join(bare + ([args.to] if args.to else []))}")
    if bare:
        args.to = bare[0]
        args.overrides = [o for o in args.overrides if "=" in o]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also come after options (`run f.yaml --stages a x.y=1`).
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(args.overrides) + extra
    if args.command == "rollback":
        _rollback_name(parser, args)
    try:
        pipe = load_pipeline(args.file, args.overrides)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    _, fn = _resolve(COMMANDS[args.command])
    from llmray.storage import StorageError

    try:
        return int(fn(pipe, args) or 0)
    except StorageError as e:  # the store behind a URI workdir: unreachable, no credentials, ...
        print(f"[llmray] {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
