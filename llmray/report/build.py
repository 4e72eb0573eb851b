"""Collects what a run directory holds into plain views the page template renders.

Data flow: `<run>/pipeline.resolved.yaml` (or the validated pipeline, when given) says which
stages exist and in which order -> for each stage, `<run>/<stage>/manifest.json` gives status,
fingerprint, timings and final metrics, and `metrics.jsonl` gives the logged curves -> a
`RunView` of `StageView`s. A running stage writes into `<run>/.staging/<stage>/` until it
completes, so its live `metrics.jsonl` and log are read from there. Nothing here writes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmray.graph import topo_order

TRAINING_KINDS = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")
X_KEYS = ("step", "iteration", "iter", "global_step", "epoch")  # first present becomes the x axis
NOT_SERIES = {"time", "timestamp", "wall_s", "elapsed_s", "rank", "world_size", "seed"}
LOG_TAIL_LINES = 30
REJECTED_SHOWN = 3  # audit samples shown per curate operator


@dataclass
class StageView:
    """One stage as the report shows it."""

    name: str
    kind: str
    status: str  # completed | running | failed | pending (no manifest yet)
    dir: Path
    manifest: dict = field(default_factory=dict)
    stale: bool = False  # completed, but the pipeline's config has changed since
    x_key: str = "step"
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    records: int = 0
    log_tail: str = ""
    rejected: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics") or {}

    @property
    def elapsed_s(self) -> float | None:
        if self.manifest.get("elapsed_s") is not None:
            return float(self.manifest["elapsed_s"])
        started = _parse_time(self.manifest.get("started"))
        if self.status == "running" and started:
            return (dt.datetime.now(dt.UTC) - started).total_seconds()
        return None


@dataclass
class RunView:
    name: str
    run_dir: Path
    stages: list[StageView]
    generated: str

    @property
    def running(self) -> bool:
        return any(s.status == "running" for s in self.stages)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.stages:
            out[s.status] = out.get(s.status, 0) + 1
        return out


def _parse_time(text) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """Records of a JSONL file; a torn last line (a writer mid-append) and bad lines are skipped."""
    out: list[dict] = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
                    if limit and len(out) >= limit:
                        break
    except OSError:
        pass
    return out


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series_from_records(records: list[dict]) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """(x key, {metric: [(x, y)]}) for every numeric key; a key logged only on some steps
    (val_loss every N steps) gets just those points."""
    x_key = next((k for k in X_KEYS if any(_is_num(r.get(k)) for r in records)), "record")
    series: dict[str, list[tuple[float, float]]] = {}
    for i, rec in enumerate(records):
        x = rec.get(x_key, i) if x_key != "record" else i
        if not _is_num(x):
            continue
        for key, y in rec.items():
            if key in X_KEYS or key in NOT_SERIES or not _is_num(y):
                continue
            series.setdefault(key, []).append((float(x), float(y)))
    return x_key, series


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _rejected(stage_dir: Path) -> dict[str, list[dict]]:
    folder = stage_dir / "rejected"
    if not folder.is_dir():
        return {}
    return {p.stem: read_jsonl(p, REJECTED_SHOWN) for p in sorted(folder.glob("*.jsonl"))}


def stage_view(run_dir: Path, name: str, kind: str | None, expected_fp: str | None = None) -> StageView:
    """Everything the report shows about one stage."""
    final = run_dir / name
    man = read_json(final / "manifest.json") or {}
    status = man.get("status") or "pending"
    # While running, outputs (metrics.jsonl, log.txt) live in the staging folder.
    live = run_dir / ".staging" / name if status == "running" else final
    view = StageView(name=name, kind=kind or man.get("kind") or "?", status=status, dir=final, manifest=man)
    view.stale = bool(status == "completed" and expected_fp and man.get("fingerprint") != expected_fp)
    records = read_jsonl(live / "metrics.jsonl")
    view.records = len(records)
    view.x_key, view.series = series_from_records(records)
    if status in ("running", "failed"):
        view.log_tail = _log_tail(live / "log.txt")
    if view.kind == "curate":
        view.rejected = _rejected(final)
    return view


def _stages_from_resolved(run_dir: Path) -> list[tuple[str, str | None]]:
    """(name, kind) in file order from pipeline.resolved.yaml, then any other stage folders."""
    found: list[tuple[str, str | None]] = []
    try:
        raw = yaml.safe_load((run_dir / "pipeline.resolved.yaml").read_text(encoding="utf-8")) or {}
        for name, cfg in (raw.get("stages") or {}).items():
            found.append((str(name), (cfg or {}).get("kind")))
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    known = {n for n, _ in found}
    if run_dir.is_dir():
        for d in sorted(run_dir.iterdir()):
            if (
                d.is_dir()
                and not d.name.startswith(".")
                and d.name not in known
                and (d / "manifest.json").exists()
            ):
                found.append((d.name, None))
    return found


def collect(run_dir: Path, pipe=None, fingerprints: dict[str, str] | None = None) -> RunView:
    """The whole run. With `pipe` (the validated pipeline) stages come in dependency order; with
    `fingerprints` too (stage -> the fingerprint of the config now, from the runner), a completed
    stage whose fingerprint no longer matches is marked stale."""
    run_dir = Path(run_dir)
    if pipe is not None:
        fps = fingerprints or {}
        stages = [stage_view(run_dir, n, pipe.stages[n].kind, fps.get(n)) for n in topo_order(pipe)]
        name = pipe.name
    else:
        stages = [stage_view(run_dir, n, k) for n, k in _stages_from_resolved(run_dir)]
        name = run_dir.name
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return RunView(name=name, run_dir=run_dir, stages=stages, generated=now)
