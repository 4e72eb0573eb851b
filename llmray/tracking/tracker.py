"""The Tracker: what the runner tells the tracking backends and the console, and when.

Data flow. The runner calls pipeline_started -> (stage_started -> stage_finished | stage_cached)*
-> pipeline_finished. While a stage runs, a background thread tails its metrics.jsonl (the file
MetricsWriter appends to, wherever the writer runs: the Ray Train metrics actor, the RL driver,
a stage's own code) every `POLL_S` or as soon as a writer in this process signals a write
(llmray.stages.base.MetricsWriter -> `notify`). Each new record goes, step-indexed, to every
backend of that stage and to the listeners (the console). So workers and RL roles never talk to a
tracking server: metrics.jsonl stays the record of truth, and a slow or dead server costs the
training loop nothing.

Runs are continued, never forked: <run>/tracking.json keeps the parent run, each stage's run ids
(per backend) and fingerprint, and the last step forwarded; a rerun after a failure reopens those
runs, and a resumed stage's replayed steps (training restarts from its last checkpoint) are not
logged twice. A stage whose fingerprint changed gets a new nested run under the same parent.
A cached stage that already has a run is only tagged; one without (tracking turned on later) gets a
run with its params and final figures, tagged `llmray.status: cached`.

A backend that fails to start warns once and is left out (or raises TrackingUnavailable with
`tracking.required: true`); one that fails later warns once and is dropped for the rest of the run.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import threading
import time
from pathlib import Path

from llmray.tracking.backends import (
    BackendUnavailable,
    MlflowBackend,
    TensorBoardBackend,
    WandbBackend,
    versions,
)

STATE_FILE = "tracking.json"
POLL_S = 1.0  # the longest a record waits before it is forwarded
MIN_GAP_S = 0.25  # the shortest time between two reads: a record every step still costs one batch per gap
STEP_KEYS = ("step", "iteration")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")

_wake = threading.Event()


def notify() -> None:
    """A MetricsWriter in this process appended a record: forward it now rather than at the next poll."""
    _wake.set()


class TrackingUnavailable(RuntimeError):
    """`tracking.required: true` and a backend could not be reached."""


def flatten(obj, prefix: str = "") -> dict:
    """Nested dicts/lists -> {"a.b.0": value}."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, (dict, list, tuple)) for v in obj):
        items = enumerate(obj)
    else:
        return {prefix: obj} if prefix else {}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def numeric(record: dict) -> dict:
    """The numbers of a record, flattened, under keys every backend accepts (no step, no flags)."""
    out = {}
    for k, v in flatten({k: v for k, v in record.items() if k not in STEP_KEYS and k != "event"}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # NaN: nothing to plot
            out[_KEY_BAD.sub("_", k)] = float(v)
    return out


def step_of(record: dict) -> int | None:
    for key in STEP_KEYS:
        if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool):
            return int(record[key])
    return None


def stage_total(cfg) -> int | None:
    """How many steps (training kinds: `train.steps`; others: `steps`) or iterations (RL kinds) the stage
    runs, for progress and ETA; None when it has no such count."""
    train = getattr(cfg, "train", None)
    total = getattr(train, "steps", None) or getattr(cfg, "iterations", None) or getattr(cfg, "steps", None)
    return total if isinstance(total, int) else None


class StageTail:
    """Reads the records appended to a stage's metrics.jsonl since the last read. `paths` are where
    the file may be: the staging folder while the stage runs, the final folder once it completed."""

    def __init__(self, paths: list[Path]):
        self.paths, self.offset = paths, 0

    def read(self) -> list[dict]:
        for path in self.paths:
            if path.exists():
                with path.open("rb") as f:
                    f.seek(self.offset)
                    data = f.read()
                end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
                self.offset += end
                return [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return []


class Tracker:
    """Fans the runner's events and the stages' metrics out to the backends and listeners.

    Three threads: the runner's (events; listeners are told at once), the pump (tails metrics.jsonl,
    tells listeners, queues the records) and the backend worker (opens the backends, then runs every
    queued backend call in order). So neither the console nor the pipeline waits on a tracking server;
    pipeline_finished waits for the queue to empty.
    """

    def __init__(self, pipe, root: Path, echo=print, listeners=(), put_file=None, get_file=None):
        self.pipe, self.cfg, self.root, self.echo = pipe, pipe.tracking, root, echo
        self.listeners = list(listeners)
        self.put_file = put_file or (lambda rel: None)
        if get_file is not None:  # an object-store workdir: a fresh mirror reopens the runs the store knows
            for rel in (STATE_FILE, *(["mlflow.db"] if self.cfg.mlflow and not self.cfg.tracking_uri else [])):
                get_file(rel)
        self.state = self._load()
        if isinstance(self.cfg.log_models, list) and set(self.cfg.log_models) - set(pipe.stages):
            echo(f"[llmray] ! tracking.log_models names no stage {sorted(set(self.cfg.log_models) - set(pipe.stages))}")
        self.lock = threading.RLock()  # guards `state` and `active`
        self.active: dict[str, dict] = {}  # stage -> {"tail", "backends", "entry", "floor", "last"}
        self._warned: set[str] = set()
        self.backends: list = []
        self.queue: queue.Queue = queue.Queue()
        if self.cfg.required:  # fail fast, before any stage runs
            self.backends = self._open_backends()
        self._worker = threading.Thread(target=self._work, args=(not self.cfg.required,),
                                        name="llmray-tracking-backends", daemon=True)
        self._worker.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="llmray-tracking", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ setup

    def _load(self) -> dict:
        try:
            return json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {"pipeline": {}, "stages": {}}

    def _save(self) -> None:
        with self.lock:
            text = json.dumps(self.state, indent=1)
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.root / STATE_FILE)

    def mlflow_uri(self) -> str:
        return self.cfg.tracking_uri or f"sqlite:///{self.root / 'mlflow.db'}"

    def _open_backends(self) -> list:
        makers = []
        if self.cfg.mlflow:
            embedded = None if self.cfg.tracking_uri else self.root / "mlflow.db"
            makers.append(("mlflow", lambda: MlflowBackend(
                self.mlflow_uri(), self.cfg.experiment or self.pipe.name,
                None if self.cfg.tracking_uri else (self.root / "mlartifacts").as_uri(), embedded)))
        if self.cfg.tensorboard:
            makers.append(("tensorboard", lambda: TensorBoardBackend(self.root / "tensorboard")))
        if self.cfg.wandb is not None:
            makers.append(("wandb", lambda: WandbBackend(self.cfg.wandb, self.root, self.pipe.name)))
        out = []
        for name, make in makers:
            try:
                out.append(make())
            except Exception as e:  # noqa: BLE001 - unreachable server, missing library, bad URI
                msg = e if isinstance(e, BackendUnavailable) else f"{type(e).__name__}: {e}"
                if self.cfg.required:
                    raise TrackingUnavailable(f"tracking.required is true and {name} cannot start: {msg}") from e
                self.echo(f"[llmray] ! tracking: {name} is off for this run ({msg}); metrics.jsonl is unaffected")
        return out

    # ------------------------------------------------------------ the backend worker

    def _work(self, open_first: bool) -> None:
        if open_first:
            self.backends = self._open_backends()
        while True:
            job = self.queue.get()
            if job is None:
                return
            try:
                job()
            except Exception as e:  # noqa: BLE001 - tracking never stops the pipeline
                self.echo(f"[llmray] ! tracking: {type(e).__name__}: {e}")

    def _call(self, backend, method: str, *args):
        """Call a backend (worker thread); on error warn once and drop it for the rest of the run."""
        if backend not in self.backends:
            return None
        try:
            return getattr(backend, method)(*args)
        except Exception as e:  # noqa: BLE001
            self.backends.remove(backend)
            if backend.name not in self._warned:
                self._warned.add(backend.name)
                self.echo(f"[llmray] ! tracking: {backend.name} failed ({type(e).__name__}: {e}); "
                          f"it is off for the rest of this run, metrics.jsonl is unaffected")
            return None

    def _stage_backends(self, cfg) -> list:
        over = getattr(cfg, "tracking", None)
        if over is None:
            return list(self.backends)
        if not over.enabled:
            return []
        return [b for b in self.backends if getattr(over, b.name) is not False]

    def _notify(self, event: str, *args) -> None:
        for listener in self.listeners:
            fn = getattr(listener, event, None)
            if fn is not None:
                fn(*args)

    def _entry(self, name: str, fp: str, running: bool = False) -> tuple[dict, bool]:
        """The stage's saved state; a new one when the fingerprint changed, or when a stage whose run
        completed runs again (`--force`: a new execution, not a continuation). (entry, resumed)"""
        with self.lock:
            entry = self.state["stages"].get(name)
            done = entry and any(isinstance(v, dict) and v.get("done") for v in entry.values())
            if entry and entry.get("fingerprint") == fp and not (running and done):
                return entry, True
            entry = self.state["stages"][name] = {"fingerprint": fp, "logged_step": -1}
            return entry, False

    def _params(self, name: str, cfg, fp: str, inputs: dict) -> dict:
        params = {f"config.{k}": v for k, v in flatten(cfg.model_dump(mode="json", by_alias=True)).items()}
        params.update({"stage": name, "kind": cfg.kind, "fingerprint": fp, **versions()})
        params.update({f"input.{k}": v for k, v in inputs.items()})
        return params

    # ------------------------------------------------------------ runner events (runner thread)

    def pipeline_started(self) -> None:
        started = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        tags = {"llmray.pipeline": self.pipe.name, "llmray.run_dir": str(self.root), "llmray.started": started}

        def job():
            for b in list(self.backends):
                self._call(b, "start_pipeline", self.state["pipeline"].setdefault(b.name, {}), self.pipe.name, tags)
            self._save()
            self.put_file(STATE_FILE)

        self.queue.put(job)

    def stage_started(self, name: str, cfg, fp: str, inputs: dict, paths: list[Path], total: int | None) -> None:
        params = self._params(name, cfg, fp, inputs)
        tags = {"llmray.kind": cfg.kind, "llmray.fingerprint": fp, "llmray.status": "running"}
        entry, resumed = self._entry(name, fp, running=True)
        info = {"tail": StageTail(paths), "backends": [], "entry": entry,
                "floor": entry["logged_step"] if resumed else -1, "last": 0}

        def job():
            for b in self._stage_backends(cfg):
                self._call(b, "start_stage", name, entry.setdefault(b.name, {}), params, tags)
                info["backends"].append(b)
            self._save()

        self.queue.put(job)
        with self.lock:
            self.active[name] = info
        self._notify("stage_started", name, cfg.kind, total, resumed)

    def stage_finished(self, name: str, manifest: dict, artifacts: list[Path]) -> None:
        """The stage completed or failed: the last records, final figures, files, end status."""
        with self.lock:
            self._drain(name)
            info = self.active.pop(name, None)
        if info is None:
            return
        final = numeric(manifest.get("metrics") or {})
        status = manifest.get("status", "completed")
        model = self._model_dir(name, manifest)
        failed: list[str] = []
        done = threading.Event()

        def job():
            try:
                for b in info["backends"]:
                    if final:
                        self._call(b, "log_final", name, final)
                    if model is not None and b.name == "mlflow" and b in self.backends:
                        self._log_model(b, name, model, info["entry"], failed)
                    self._call(b, "end_stage", name, status, [p for p in artifacts if p.is_file()])
                    # A completed run is final: when the stage is cached later it is linked, never logged again.
                    info["entry"].setdefault(b.name, {})["done"] = status == "completed"
                self._save()
                self.put_file(STATE_FILE)
            finally:
                done.set()

        self.queue.put(job)
        self._notify("stage_finished", name, manifest)
        if model is not None and self.cfg.required:  # wait for the model: a failure to log it stops the run
            done.wait()
            if failed:
                raise TrackingUnavailable(f"tracking.required is true and {failed[0]}")

    def _model_dir(self, name: str, manifest: dict) -> Path | None:
        """The stage's saved model folder when `tracking.log_models` asks for it, else None."""
        wanted = self.cfg.log_models
        rel = (manifest.get("outputs") or {}).get("model")
        if manifest.get("status") != "completed" or not rel or not (wanted is True or name in (wanted or ())):
            return None
        folder = self.root / name / rel
        return folder if (folder / "config.json").is_file() else None

    def _log_model(self, backend, name: str, folder: Path, entry: dict, failed: list) -> None:
        """Log the model (worker thread). A failure warns and leaves the backend on (the metrics and the
        run are fine); with `tracking.required` it is reported back to stage_finished."""
        registered = f"{self.cfg.registered_model}-{name}" if self.cfg.registered_model else None
        t0 = time.time()
        try:
            uri = backend.log_model(name, folder, registered)
        except Exception as e:  # noqa: BLE001 - any MLflow or flavour error
            failed.append(f"the model of {name} could not be logged to MLflow ({type(e).__name__}: {e})")
            if not self.cfg.required:
                self.echo(f"[llmray] ! tracking: {failed[-1]}; the stage's outputs are unaffected")
            return
        entry.setdefault("mlflow", {})["model_uri"] = uri
        self.echo(f"[llmray]   {name}: model logged to MLflow as {uri}"
                  + (f", registered as {registered!r}" if registered else "") + f" in {time.time() - t0:.1f}s")

    def stage_cached(self, name: str, cfg, fp: str, manifest: dict, artifacts: list[Path]) -> None:
        """A cached stage is linked to its existing run, or gets one (params + final figures) if it has none."""
        entry, _ = self._entry(name, fp)
        tags = {"llmray.kind": cfg.kind, "llmray.fingerprint": fp, "llmray.status": "cached"}
        params = self._params(name, cfg, fp, manifest.get("inputs") or {})
        final = numeric(manifest.get("metrics") or {})

        def job():
            for b in self._stage_backends(cfg):
                state = entry.setdefault(b.name, {})
                if state.get("done"):
                    continue
                self._call(b, "start_stage", name, state, params, tags)
                if final:
                    self._call(b, "log_final", name, final)
                self._call(b, "end_stage", name, "completed", [p for p in artifacts if p.is_file()])
                state["done"] = True
            self._save()

        self.queue.put(job)
        self._notify("stage_cached", name, cfg.kind, manifest)

    def pipeline_finished(self, status: str, artifacts: list[Path]) -> None:
        """End the parent run and wait for every queued backend call."""
        self._stop.set()
        _wake.set()
        self._thread.join(timeout=10)

        def job():
            for b in list(self.backends):
                self._call(b, "end_pipeline", status, [p for p in artifacts if p.is_file()])
            self._save()
            self.put_file(STATE_FILE)
            if self.cfg.mlflow and not self.cfg.tracking_uri:
                self.put_file("mlflow.db")

        self.queue.put(job)
        self.queue.put(None)
        self._worker.join()

    # ------------------------------------------------------------ metrics (pump thread)

    def _drain(self, name: str) -> None:
        info = self.active.get(name)
        if info is None:
            return
        try:
            records = info["tail"].read()
        except (OSError, ValueError):
            return  # a torn or vanished file: the next read (or the end of the stage) picks it up
        batch = []
        for record in records:
            step = step_of(record)
            step = info["last"] if step is None else step
            info["last"] = step
            self._notify("record", name, record)
            metrics = numeric(record)
            if metrics and step > info["floor"]:  # not logged before this stage was resumed
                batch.append((step, metrics))
        if batch:
            self.queue.put(lambda: self._log(name, info, batch))

    def _log(self, name: str, info: dict, batch: list) -> None:
        for b in list(info["backends"]):
            self._call(b, "log_steps", name, batch)
        with self.lock:
            info["entry"]["logged_step"] = max(info["entry"]["logged_step"], max(s for s, _ in batch))
        self._save()

    def _pump(self) -> None:
        while not self._stop.is_set():
            _wake.wait(POLL_S)
            _wake.clear()
            time.sleep(MIN_GAP_S)  # records that come in a burst go out in one batch
            with self.lock:
                for name in list(self.active):
                    self._drain(name)
            self._notify("tick")
