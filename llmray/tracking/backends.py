"""The tracking backends: MLflow (default), TensorBoard (tensorboardX) and Weights & Biases.

Each backend speaks its library's own client and nothing else; the Tracker (tracking/tracker.py)
decides what to log and when, and calls every backend from one thread at a time. A backend keeps
the ids it needs to continue a run in the `state` dict the Tracker persists in <run>/tracking.json,
so a rerun of the pipeline (after a failure, or a resumed stage) reopens the same runs:

  start_pipeline(state)                      the parent run (MLflow); nothing for the others
  start_stage(stage, state, params, tags)    a nested run per stage; `state` is the stage's entry
  log_steps(stage, [(step, metrics), ...])   step-indexed numbers, as the stage logs them, in batches
  end_stage(stage, status, artifacts)        the manifest, log and report files; the run's end status
  end_pipeline(status, artifacts)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.request
import uuid
import warnings
from importlib import metadata
from pathlib import Path

MAX_PARAM = 6000  # MLflow 3's limit on a param value's length
BATCH = 100  # MLflow's limit on params per log_batch call

_STATUS = {"completed": "FINISHED", "failed": "FAILED", "running": "RUNNING", "killed": "KILLED"}


class BackendUnavailable(RuntimeError):
    """A backend could not start (server unreachable, library missing)."""


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast on an HTTP tracking server that does not answer: MLflow's own client retries
    with backoff for minutes before it gives up, which would stall the pipeline."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:  # noqa: S310 - http(s) only
            r.read()
    except OSError as e:
        raise BackendUnavailable(f"MLflow tracking server {uri} is unreachable: {e}") from None


_EMPTY_STORE: sqlite3.Connection | None = None  # a new, migrated MLflow SQLite store, kept in memory
_EMPTY_LOCK = threading.Lock()


def _new_store(path: Path, open_client):
    """Open (creating if need be) the embedded SQLite store at `path`. Creating one runs MLflow's whole
    chain of schema migrations (1-2 s of CPU); a process pays that once and copies the empty result
    (sqlite3's backup API) into every later new store, so a short pipeline run is not kept waiting."""
    global _EMPTY_STORE
    with _EMPTY_LOCK:
        new = not path.exists()
        if new and _EMPTY_STORE is not None:
            with sqlite3.connect(path) as dst:
                _EMPTY_STORE.backup(dst)
        client = open_client()
        if new and _EMPTY_STORE is None:  # just migrated, still empty: keep a copy
            with sqlite3.connect(path) as src:
                _EMPTY_STORE = sqlite3.connect(":memory:", check_same_thread=False)
                src.backup(_EMPTY_STORE)
        return client


_TASKS = {"ForCausalLM": "text-generation", "ForSequenceClassification": "text-classification"}


def hf_task(folder: Path) -> str:
    """The transformers pipeline task of a saved model folder, from its config's architecture."""
    arch = (json.loads((folder / "config.json").read_text()).get("architectures") or [""])[0]
    for suffix, task in _TASKS.items():
        if arch.endswith(suffix):
            return task
    raise ValueError(f"{folder}: no MLflow transformers task for architecture {arch!r}")


def versions() -> dict[str, str]:
    """Package versions a result depends on (from metadata: nothing heavy is imported)."""
    out = {}
    for pkg in ("llmray", "torch", "ray", "transformers", "vllm"):
        try:
            out[f"version.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class MlflowBackend:
    """One parent run per pipeline run, one nested run per stage (tag mlflow.parentRunId)."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, artifact_location: str | None, embedded: Path | None = None):
        # Keep MLflow quiet and local: no usage telemetry, no database-migration INFO lines on the console,
        # a short timeout per request (the tracker runs off the training path, but the runner waits for it).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)\b")
        check_reachable(uri)
        from mlflow import MlflowClient

        # After the import: importing mlflow sets its logger to INFO.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)

        self.uri = uri
        self.client = _new_store(embedded, lambda: MlflowClient(uri)) if embedded else MlflowClient(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=artifact_location)
        self.parent: str | None = None
        self.runs: dict[str, str] = {}

    def _alive(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # noqa: BLE001 - a run id from another store, or a deleted run: start a new one
            return False

    def start_pipeline(self, state: dict, name: str, tags: dict) -> None:
        if self._alive(state.get("run_id")):
            self.parent = state["run_id"]
            self.client.update_run(self.parent, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            self.parent = state["run_id"] = run.info.run_id

    def start_stage(self, stage: str, state: dict, params: dict, tags: dict) -> bool:
        """Open (or reopen) the stage's nested run; True when it is new (params to log)."""
        from mlflow.entities import Param, RunTag

        if self._alive(state.get("run_id")):
            self.runs[stage] = state["run_id"]
            self.client.update_run(state["run_id"], status="RUNNING")
            self.client.log_batch(state["run_id"], tags=[RunTag(k, str(v)) for k, v in tags.items()])
            return False
        run = self.client.create_run(self.experiment_id, run_name=stage,
                                     tags={"mlflow.parentRunId": self.parent, **tags})
        self.runs[stage] = state["run_id"] = run.info.run_id
        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run.info.run_id, params=items[i:i + BATCH])
        return True

    def log_steps(self, stage: str, steps: list[tuple[int, dict]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for step, metrics in steps for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's limit on metrics per batch (one transaction each)
            self.client.log_batch(self.runs[stage], metrics=items[i:i + 1000])

    def log_final(self, stage: str, metrics: dict) -> None:
        self.log_steps(stage, [(0, {f"final/{k}": v for k, v in metrics.items()})])

    def log_model(self, stage: str, folder: Path, registered_name: str | None) -> str:
        """Log a saved HF model folder to the stage's run as an MLflow `transformers` model (from the
        folder: nothing is loaded from a hub), registered under `registered_name` when given.
        Returns the model URI."""
        import mlflow

        task = hf_task(folder)
        # log_model is MLflow's fluent API: it logs to the process's tracking URI and active run.
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        quiet = logging.getLogger("mlflow.transformers")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "model card could not be retrieved from the hub": offline by design
        try:
            with mlflow.start_run(run_id=self.runs[stage]):
                info = mlflow.transformers.log_model(
                    str(folder), name="model", task=task, registered_model_name=registered_name,
                    # Pinned from this environment; MLflow's own inference imports torchvision.
                    pip_requirements=[f"{k[len('version.'):]}=={v.split('+')[0]}" for k, v in versions().items()
                                      if k in ("version.torch", "version.transformers")])
        finally:
            quiet.setLevel(level)
            mlflow.set_tracking_uri(previous)
        self.client.set_tag(self.runs[stage], "llmray.model_uri", info.model_uri)
        return info.model_uri

    def end_stage(self, stage: str, status: str, artifacts: list[Path]) -> None:
        run_id = self.runs.pop(stage)
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_tag(run_id, "llmray.status", status)
        self.client.set_terminated(run_id, status=_STATUS.get(status, "FINISHED"))

    def end_pipeline(self, status: str, artifacts: list[Path]) -> None:
        for path in artifacts:
            self.client.log_artifact(self.parent, str(path))
        self.client.set_terminated(self.parent, status=_STATUS.get(status, "FINISHED"))


class TensorBoardBackend:
    """Event files per stage under <run>/tensorboard/<stage> (tensorboardX's SummaryWriter)."""

    name = "tensorboard"

    def __init__(self, logdir: Path):
        from tensorboardX import SummaryWriter  # noqa: F401 - fail at start, not at the first metric

        self.logdir = logdir
        self.writers: dict = {}

    def start_pipeline(self, state: dict, name: str, tags: dict) -> None:
        pass

    def start_stage(self, stage: str, state: dict, params: dict, tags: dict) -> bool:
        from tensorboardX import SummaryWriter

        # A rerun appends a new event file to the same folder; TensorBoard reads them as one run.
        self.writers[stage] = SummaryWriter(logdir=str(self.logdir / stage), flush_secs=5)
        new = not state.get("started")
        if new:
            self.writers[stage].add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))
            state["started"] = True
        return new

    def log_steps(self, stage: str, steps: list[tuple[int, dict]]) -> None:
        w = self.writers[stage]
        for step, metrics in steps:
            for k, v in metrics.items():
                w.add_scalar(k, v, step)

    def log_final(self, stage: str, metrics: dict) -> None:
        self.log_steps(stage, [(0, {f"final/{k}": v for k, v in metrics.items()})])

    def end_stage(self, stage: str, status: str, artifacts: list[Path]) -> None:
        self.writers.pop(stage).close()

    def end_pipeline(self, status: str, artifacts: list[Path]) -> None:
        pass


class WandbBackend:
    """One W&B run per stage, `group` = the pipeline run, resumed by id on a rerun."""

    name = "wandb"

    def __init__(self, cfg, run_dir: Path, pipeline: str):
        import wandb  # noqa: F401 - fail at start when missing

        self.cfg, self.dir, self.pipeline = cfg, run_dir, pipeline
        self.runs: dict = {}
        self.group: str | None = None

    def start_pipeline(self, state: dict, name: str, tags: dict) -> None:
        self.group = state.setdefault("group", f"{self.pipeline}-{tags.get('llmray.started', '')}".rstrip("-"))

    def start_stage(self, stage: str, state: dict, params: dict, tags: dict) -> bool:
        import wandb

        new = "run_id" not in state
        state.setdefault("run_id", uuid.uuid4().hex[:12])  # W&B run ids: [a-z0-9]
        self.runs[stage] = wandb.init(
            project=self.cfg.project or self.pipeline, entity=self.cfg.entity, mode=self.cfg.mode,
            dir=str(self.dir), id=state["run_id"], resume="allow", name=stage, group=self.group,
            job_type=tags.get("llmray.kind"), config=params, reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"))
        return new

    def log_steps(self, stage: str, steps: list[tuple[int, dict]]) -> None:
        run = self.runs[stage]
        for step, metrics in steps:
            # W&B's step axis only moves forward: a record at an earlier step joins the current one.
            run.log(metrics, step=max(step, run.step))

    def log_final(self, stage: str, metrics: dict) -> None:
        self.runs[stage].summary.update(metrics)

    def end_stage(self, stage: str, status: str, artifacts: list[Path]) -> None:
        self.runs.pop(stage).finish(exit_code=0 if status == "completed" else 1)

    def end_pipeline(self, status: str, artifacts: list[Path]) -> None:
        pass
