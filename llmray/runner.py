"""Runs a validated pipeline: order, fingerprint, skip what is cached, run the rest.

For each stage in dependency order:
  fingerprint = sha256(kind, the kind's VERSION, the stage config, the inputs' fingerprints)
  - `<run>/<stage>/manifest.json` completed with that fingerprint -> skipped (cached);
  - otherwise the stage runs with outputs going to `<run>/.staging/<stage>/`; on success the
    manifest (status completed) is written there and the folder is renamed to `<run>/<stage>/`,
    so a completed manifest always sits beside complete outputs. On failure
    `<run>/<stage>/manifest.json` says `failed` with the error, and the run stops.
  - `<run>/.work/<stage>-<fp>/` holds what a retry of the same fingerprint may resume from
    (training checkpoints); it is removed once the stage completes.
Changing one stage's config changes its fingerprint and so its dependents' fingerprints:
exactly that stage and what reads from it run again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmray.config import dump_resolved
from llmray.graph import ancestors, topo_order
from llmray.resources import data_placement
from llmray.stages import get_stage
from llmray.stages.base import StageContext, StageOutput, StageResult

# Neither changes what a stage produces: free text, and which nodes do the work.
NOT_FINGERPRINTED = {"description", "placement"}


class StageFailed(RuntimeError):
    def __init__(self, name: str, error: str):
        self.name = name
        super().__init__(f"stage {name!r} failed: {error}")


def run_dir(pipe) -> Path:
    # Absolute: Ray Train's storage_path (and any actor with another cwd) needs a full path.
    return Path(pipe.workdir).expanduser().absolute() / pipe.name


def fingerprints(pipe) -> dict[str, str]:
    """Stage name -> content fingerprint (config + inputs' fingerprints + code version)."""
    fps: dict[str, str] = {}
    for name in topo_order(pipe):
        cfg = pipe.stages[name]
        payload = {
            "kind": cfg.kind,
            "version": get_stage(cfg.kind).VERSION,
            "config": cfg.model_dump(mode="json", exclude=NOT_FINGERPRINTED),
            "inputs": {field: [fps[r] for r in refs] for field, refs in cfg.input_refs().items()},
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        fps[name] = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return fps


def read_manifest(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class PlanItem:
    name: str
    kind: str
    fingerprint: str
    state: str  # cached | run | failed (will rerun) | stale (will rerun)
    deps: list[str]


def plan(pipe) -> list[PlanItem]:
    """What `run` would do now, without doing it."""
    fps = fingerprints(pipe)
    root = run_dir(pipe)
    items = []
    for name in topo_order(pipe):
        man = read_manifest(root / name)
        if man is None:
            state = "run"
        elif man.get("status") == "completed" and man.get("fingerprint") == fps[name]:
            state = "cached"
        elif man.get("status") == "completed":
            state = "stale"
        else:
            state = man.get("status", "run")
        deps = [r for refs in pipe.stages[name].input_refs().values() for r in refs]
        items.append(PlanItem(name, pipe.stages[name].kind, fps[name], state, deps))
    return items


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _stage_logger(name: str, logfile: Path) -> logging.Logger:
    log = logging.getLogger(f"llmray.stage.{name}")
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fh = logging.FileHandler(logfile, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    return log


def _inputs(pipe, name: str, root: Path) -> dict[str, list[StageOutput]]:
    out: dict[str, list[StageOutput]] = {}
    for field, refs in pipe.stages[name].input_refs().items():
        outs = []
        for ref in refs:
            man = read_manifest(root / ref)
            if not man or man.get("status") != "completed":
                raise StageFailed(name, f"input stage {ref!r} has no completed output")
            outs.append(StageOutput(ref, man["kind"], root / ref, man))
        out[field] = outs
    return out


def run_stage(pipe, name: str, fp: str, fps: dict[str, str], echo=print) -> dict:
    """Run one stage to completion (or a `failed` manifest). Returns the manifest."""
    cfg = pipe.stages[name]
    root = run_dir(pipe)
    final, staging = root / name, root / ".staging" / name
    work = root / ".work" / f"{name}-{fp[:12]}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)  # stale, failed or forced: it is being redone
    final.mkdir(parents=True)
    inputs = {ref: fps[ref] for refs in cfg.input_refs().values() for ref in refs}
    manifest = {"name": name, "kind": cfg.kind, "fingerprint": fp, "status": "running", "started": _now(),
                "finished": None, "inputs": inputs, "metrics": {}, "outputs": {}}
    _write_json(final / "manifest.json", manifest)
    log = _stage_logger(name, staging / "log.txt")
    t0 = time.time()
    echo(f"[llmray] ▶ {name} ({cfg.kind}) started")
    try:
        ctx = StageContext(name=name, kind=cfg.kind, fingerprint=fp, run_dir=root, out_dir=staging,
                           work_dir=work, inputs=_inputs(pipe, name, root), pipeline=pipe, log=log)
        log.info("stage %s (%s) fingerprint %s", name, cfg.kind, fp)
        # Data stages' `placement` scopes every Ray Data Dataset the stage builds to labelled nodes.
        with data_placement(getattr(cfg, "placement", None)):
            result = get_stage(cfg.kind).run(cfg, ctx)
        if not isinstance(result, StageResult):
            raise TypeError(f"{cfg.kind}.run returned {type(result).__name__}, expected StageResult")
        for key, rel in result.outputs.items():
            if not (staging / rel).exists():
                raise FileNotFoundError(f"declared output {key!r} -> {rel} was not written")
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt must also leave a failed manifest
        err = f"{type(e).__name__}: {e}"
        log.error("failed: %s\n%s", err, traceback.format_exc())
        manifest.update(status="failed", finished=_now(), error=err, elapsed_s=round(time.time() - t0, 2),
                        traceback=traceback.format_exc()[-4000:])
        _write_json(final / "manifest.json", manifest)
        shutil.copy(staging / "log.txt", final / "log.txt")
        echo(f"[llmray] ✗ {name} failed after {time.time() - t0:.1f}s: {err}")
        if isinstance(e, KeyboardInterrupt):
            raise
        raise StageFailed(name, err) from e
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
    elapsed = time.time() - t0
    manifest.update(status="completed", finished=_now(), elapsed_s=round(elapsed, 2),
                    metrics=result.metrics, outputs=result.outputs)
    _write_json(staging / "manifest.json", manifest)
    shutil.rmtree(final)
    staging.rename(final)
    shutil.rmtree(work, ignore_errors=True)
    echo(f"[llmray] ✓ {name} ({cfg.kind}) completed in {elapsed:.1f}s")
    return manifest


def run_pipeline(pipe, stages: list[str] | None = None, force: list[str] | None = None, echo=print) -> dict:
    """Run the pipeline (or the named stages and whatever they need). Returns {stage: state}."""
    for n in (stages or []) + (force or []):
        if n not in pipe.stages:
            raise KeyError(f"no stage named {n!r}; stages are {list(pipe.stages)}")
    root = run_dir(pipe)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.resolved.yaml").write_text(dump_resolved(pipe))
    fps = fingerprints(pipe)
    wanted = ancestors(pipe, stages) if stages else set(pipe.stages)
    force = set(force or [])
    states: dict[str, str] = {}
    t0 = time.time()
    for name in topo_order(pipe):
        if name not in wanted:
            continue
        man = read_manifest(root / name)
        if name not in force and man and man.get("status") == "completed" and man.get("fingerprint") == fps[name]:
            echo(f"[llmray] = {name} ({pipe.stages[name].kind}) cached ({fps[name][:12]})")
            states[name] = "cached"
            continue
        ensure_ray(pipe)
        try:
            run_stage(pipe, name, fps[name], fps, echo)
        finally:
            _refresh_report(pipe, root)
        states[name] = "completed"
    echo(f"[llmray] pipeline {pipe.name}: {len(states)} stages "
         f"({sum(s == 'completed' for s in states.values())} ran) in {time.time() - t0:.1f}s -> {root}")
    return states


def _refresh_report(pipe, root: Path) -> None:
    """Rewrite <run>/report.html so the page follows the run. A report bug must not fail a run."""
    try:
        from llmray.report import write_report

        write_report(root, pipe)
    except Exception as e:  # noqa: BLE001
        logging.getLogger("llmray").warning("could not refresh report.html: %s", e)


def ensure_ray(pipe) -> None:
    from llmray.rayutil import init_ray

    init_ray(pipe.ray)


def status_table(pipe) -> list[dict]:
    """One row per stage: state, fingerprint, elapsed, key metrics."""
    rows = []
    root = run_dir(pipe)
    for item in plan(pipe):
        man = read_manifest(root / item.name) or {}
        rows.append({"stage": item.name, "kind": item.kind, "state": item.state,
                     "fingerprint": item.fingerprint[:12], "elapsed_s": man.get("elapsed_s"),
                     "error": man.get("error")})
    return rows


def dump_yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `llmray` command")
