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

Experiment tracking (llmray.tracking.Tracker, `tracking:` in the pipeline file) follows the run: a
parent run per run directory, a nested run per stage opened when it starts (its metrics.jsonl
tailed live), closed with its manifest and log; cached stages are linked to their earlier runs.

With `workdir: s3://...` (llmray.storage.RunStore) `<run>` above is the local mirror; manifests
for caching are read from the store, inputs are downloaded into the mirror before a stage runs,
a completed (or failed) stage is uploaded with manifest.json last, and Ray Train checkpoints
live in `.work/` on the store.
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

from llmray.fingerprint import CACHE_FILE, InputDigests, stage_payload
from llmray.graph import ancestors, topo_order
from llmray.pipeline import dump_resolved
from llmray.resources import data_placement
from llmray.stages import get_stage
from llmray.stages.base import StageContext, StageOutput, StageResult
from llmray.storage import RunStore, read_manifest, report_files  # noqa: F401 - read_manifest re-exported
from llmray.tracking import Tracker
from llmray.tracking.tracker import stage_total


class StageFailed(RuntimeError):
    def __init__(self, name: str, error: str):
        self.name = name
        super().__init__(f"stage {name!r} failed: {error}")


def run_store(pipe) -> RunStore:
    """The run directory: local folder (the mirror for a URI workdir) + the store's copy."""
    return RunStore(pipe)


def run_dir(pipe) -> Path:
    """The local run directory (for a URI workdir: its mirror, `<mirror_dir>/<name>`)."""
    return run_store(pipe).local


def fingerprints(pipe) -> dict[str, str]:
    """Stage name -> content fingerprint: the config fields that change results, the code version of
    the kind, the input stages' fingerprints and the content of external inputs (llmray.fingerprint)."""
    fps: dict[str, str] = {}
    digests = InputDigests(run_dir(pipe) / CACHE_FILE)
    for name in topo_order(pipe):
        cfg = pipe.stages[name]
        input_fps = {field: [fps[r] for r in refs] for field, refs in cfg.input_refs().items()}
        payload = stage_payload(cfg, get_stage(cfg.kind).VERSION, input_fps, digests, pipe)
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        fps[name] = hashlib.sha256(blob.encode()).hexdigest()[:20]
    digests.save()
    return fps


@dataclass
class PlanItem:
    name: str
    kind: str
    fingerprint: str
    state: str  # cached | run | failed (will rerun) | stale (will rerun)
    deps: list[str]


def _state(man: dict | None, fp: str) -> str:
    if man is None:
        return "run"
    if man.get("status") == "completed":
        return "cached" if man.get("fingerprint") == fp else "stale"
    return man.get("status", "run")


def plan(pipe) -> list[PlanItem]:
    """What `run` would do now, without doing it (manifests read from the durable copy)."""
    fps = fingerprints(pipe)
    store = run_store(pipe)
    items = []
    for name in topo_order(pipe):
        deps = [r for refs in pipe.stages[name].input_refs().values() for r in refs]
        state = _state(store.manifest(name), fps[name])
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


def _inputs(pipe, name: str, store: RunStore, fps: dict[str, str]) -> dict[str, list[StageOutput]]:
    """The completed input stages, present in the local run directory (downloaded if need be)."""
    out: dict[str, list[StageOutput]] = {}
    for field, refs in pipe.stages[name].input_refs().items():
        outs = []
        for ref in refs:
            man = store.fetch(ref)
            if not man or man.get("status") != "completed":
                raise StageFailed(name, f"input stage {ref!r} has no completed output")
            if man.get("fingerprint") != fps[ref]:
                raise StageFailed(name, f"input stage {ref!r} is stale (fingerprint {man.get('fingerprint')}, "
                                        f"config says {fps[ref]})")
            outs.append(StageOutput(ref, man["kind"], store.local / ref, man))
        out[field] = outs
    return out


def run_stage(pipe, name: str, fp: str, fps: dict[str, str], echo=print, tracker: Tracker | None = None) -> dict:
    """Run one stage to completion (or a `failed` manifest). Returns the manifest. The tracker (if any)
    follows the stage: a nested run opened now, its metrics.jsonl tailed, the outcome logged at the end."""
    cfg = pipe.stages[name]
    store = run_store(pipe)
    root = store.local
    final, staging = root / name, root / ".staging" / name
    work_name = f"{name}-{fp[:12]}"
    work = root / ".work" / work_name
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
    if tracker is not None:
        tracker.stage_started(name, cfg, fp, inputs, [staging / "metrics.jsonl", final / "metrics.jsonl"],
                              stage_total(cfg))
    try:
        store.begin(name, manifest)
        ctx = StageContext(name=name, kind=cfg.kind, fingerprint=fp, run_dir=root, out_dir=staging,
                           work_dir=work, inputs=_inputs(pipe, name, store, fps), pipeline=pipe, log=log,
                           work_remote=store.work_remote(work_name))
        log.info("stage %s (%s) fingerprint %s", name, cfg.kind, fp)
        # Data stages' `placement` scopes every Ray Data Dataset the stage builds to labelled nodes.
        with data_placement(getattr(cfg, "placement", None)):
            result = get_stage(cfg.kind).run(cfg, ctx)
        if not isinstance(result, StageResult):
            raise TypeError(f"{cfg.kind}.run returned {type(result).__name__}, expected StageResult")
        for key, rel in result.outputs.items():
            if not (staging / rel).exists():
                raise FileNotFoundError(f"declared output {key!r} -> {rel} was not written")
        _close_log(log)
        manifest.update(status="completed", finished=_now(), elapsed_s=round(time.time() - t0, 2),
                        metrics=result.metrics, outputs=result.outputs)
        _complete(store, name, staging, manifest, echo)
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt must also leave a failed manifest
        _fail(store, name, e, manifest, t0, log, echo)
        if tracker is not None:
            tracker.stage_finished(name, manifest, [final / "manifest.json", final / "log.txt"])
        if isinstance(e, KeyboardInterrupt):
            raise
        raise StageFailed(name, f"{type(e).__name__}: {e}") from e
    finally:
        _close_log(log)
    shutil.rmtree(work, ignore_errors=True)
    try:
        store.drop_work(work_name)
    except Exception as e:  # noqa: BLE001 - completed is completed; leftover checkpoints only cost space
        echo(f"[llmray]   {name}: could not delete its checkpoints on the store: {e}")
    if tracker is not None:
        tracker.stage_finished(name, manifest, [final / "manifest.json", final / "log.txt"])
    echo(f"[llmray] ✓ {name} ({cfg.kind}) completed in {manifest['elapsed_s']:.1f}s")
    return manifest


def _close_log(log: logging.Logger) -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def _complete(store: RunStore, name: str, staging: Path, manifest: dict, echo) -> None:
    """Outputs in place with the completed manifest: on the store first (manifest last), then locally."""
    if store.remote is not None:
        store.publish(name, staging, manifest)
        up = manifest["upload"]
        echo(f"[llmray]   {name}: uploaded {up['bytes'] / 2**20:.1f} MiB to {store.uri}/{name} in {up['seconds']:.1f}s")
    _write_json(staging / "manifest.json", manifest)
    final = store.local / name
    shutil.rmtree(final)
    staging.rename(final)


def _fail(store: RunStore, name: str, e: BaseException, manifest: dict, t0: float, log, echo) -> None:
    err = f"{type(e).__name__}: {e}"
    log.error("failed: %s\n%s", err, traceback.format_exc())
    _close_log(log)
    final, staging = store.local / name, store.local / ".staging" / name
    manifest.update(status="failed", finished=_now(), error=err, elapsed_s=round(time.time() - t0, 2),
                    traceback=traceback.format_exc()[-4000:])
    final.mkdir(parents=True, exist_ok=True)
    _write_json(final / "manifest.json", manifest)
    if (staging / "log.txt").exists():
        shutil.copy(staging / "log.txt", final / "log.txt")
    try:
        store.publish_failed(name, final, manifest)
    except Exception as up:  # noqa: BLE001 - the store may be what failed; the local manifest stands
        echo(f"[llmray]   {name}: could not record the failure on the store: {up}")
    echo(f"[llmray] ✗ {name} failed after {time.time() - t0:.1f}s: {err}")


def run_pipeline(pipe, stages: list[str] | None = None, force: list[str] | None = None, echo=print,
                 listeners=()) -> dict:
    """Run the pipeline (or the named stages and whatever they need). Returns {stage: state}.
    Tracking (pipe.tracking) gets one parent run for the run directory and a nested run per stage;
    `listeners` (the console) hear the same events and every metrics record."""
    for n in (stages or []) + (force or []):
        if n not in pipe.stages:
            raise KeyError(f"no stage named {n!r}; stages are {list(pipe.stages)}")
    store = run_store(pipe)
    root = store.local
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.resolved.yaml").write_text(dump_resolved(pipe))
    store.put_file("pipeline.resolved.yaml")
    fps = fingerprints(pipe)
    wanted = ancestors(pipe, stages) if stages else set(pipe.stages)
    force = set(force or [])
    states: dict[str, str] = {}
    t0 = time.time()
    tracker = Tracker(pipe, root, echo, listeners, put_file=store.put_file, get_file=store.get_file)
    tracker.pipeline_started()
    status = "failed"
    try:
        for name in topo_order(pipe):
            if name not in wanted:
                continue
            man = store.manifest(name)
            if name not in force and _state(man, fps[name]) == "cached":
                echo(f"[llmray] = {name} ({pipe.stages[name].kind}) cached ({fps[name][:12]})")
                states[name] = "cached"
                if store.remote is not None:
                    store.fetch(name, only=report_files)  # what the run report shows of it
                tracker.stage_cached(name, pipe.stages[name], fps[name], man, [root / name / "manifest.json"])
                continue
            ensure_ray(pipe)
            try:
                run_stage(pipe, name, fps[name], fps, echo, tracker)
            finally:
                _refresh_report(pipe, store)
            states[name] = "completed"
        status = "completed"
    finally:
        tracker.pipeline_finished(status, [root / "pipeline.resolved.yaml", root / "report.html"])
    echo(f"[llmray] pipeline {pipe.name}: {len(states)} stages "
         f"({sum(s == 'completed' for s in states.values())} ran) in {time.time() - t0:.1f}s -> {store.describe()}")
    return states


def _refresh_report(pipe, store: RunStore) -> None:
    """Rewrite <run>/report.html so the page follows the run. A report bug must not fail a run."""
    try:
        from llmray.report import write_report

        write_report(store.local, pipe, fingerprints=fingerprints(pipe))
        store.put_file("report.html")
    except Exception as e:  # noqa: BLE001
        logging.getLogger("llmray").warning("could not refresh report.html: %s", e)


def sync_local(pipe, stages=None, only=None) -> Path:
    """For commands that read the run directory (serve, compare, report): with a URI workdir, bring
    the named stages' (default: all) completed copies from the store into the mirror, whole or
    just the files `only` accepts. Returns the local run directory."""
    store = run_store(pipe)
    if store.remote is not None:
        for name in stages if stages is not None else topo_order(pipe):
            store.fetch(name, only=only)
    return store.local


def ensure_ray(pipe) -> None:
    from llmray.rayutil import init_ray

    init_ray(pipe.ray)


def status_table(pipe) -> list[dict]:
    """One row per stage: state, fingerprint, elapsed, key metrics."""
    rows = []
    store = run_store(pipe)
    for item in plan(pipe):
        man = store.manifest(item.name) or {}
        rows.append({"stage": item.name, "kind": item.kind, "state": item.state,
                     "fingerprint": item.fingerprint[:12], "elapsed_s": man.get("elapsed_s"),
                     "error": man.get("error")})
    return rows


def dump_yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `llmray` command")
