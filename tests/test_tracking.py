"""Experiment tracking (llmray.tracking): a real MLflow server on 127.0.0.1 receives a pipeline, a rerun
after a failure continues the same runs, an unreachable server warns once (or fails fast when
required), the embedded default store, TensorBoard event files and W&B offline files.

This module is also a tiny stage kind (`tmetrics`, registered per test): it writes step-indexed
records through MetricsWriter like a training stage, without Ray or a model, so the tracking path
is tested in seconds; `test_pretrain_killed_and_rerun_*` (slow) does it with a real tiny training stage
and a SIGKILLed worker. The server tests are slow (starting `mlflow server` takes 20-40 s here); the
embedded-store test is the cheap one CI runs.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from llmray.config import StageConfig
from llmray.pipeline import parse_pipeline
from llmray.stages import STAGES
from llmray.stages.base import StageResult

VERSION = "1"


class Config(StageConfig):
    INPUTS = {"data": ("tmetrics",)}
    kind: Literal["tmetrics"] = Field("tmetrics", description="kind")
    data: list[str] | None = Field(None, description="Input stages.")
    steps: int = Field(4, ge=1, description="Records to write.")
    pause_s: float = Field(0.0, ge=0, description="Sleep between records.")


def run(cfg: Config, ctx) -> StageResult:
    writer = ctx.metrics_writer()
    writer.write({"event": "data", "docs": 3})
    for step in range(1, cfg.steps + 1):
        writer.write({"step": step, "train_loss": 1.0 / step, "tokens_per_s": 100.0 * step, "lr": 0.1})
        time.sleep(cfg.pause_s)
    if os.environ.get(f"TMETRICS_FAIL_{ctx.name.upper()}"):
        raise RuntimeError(f"injected failure in {ctx.name}")
    (ctx.out_dir / "done.txt").write_text("ok")
    return StageResult(metrics={"final_loss": 1.0 / cfg.steps}, outputs={"done": "done.txt"})


@pytest.fixture
def tmetrics(monkeypatch):
    monkeypatch.setitem(STAGES, "tmetrics", "test_tracking")


def _pipe(tmp_path: Path, tracking: dict, **stages):
    raw = {"name": "trk", "workdir": str(tmp_path / "runs"), "tracking": tracking,
           "stages": stages or {"a": {"kind": "tmetrics", "steps": 4},
                                "b": {"kind": "tmetrics", "steps": 3, "data": ["a"]}}}
    return parse_pipeline(raw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{d}/m.db",
                             "--default-artifact-root", str(d / "artifacts")],
                            stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def _runs(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow  # ~20-40 s to start `mlflow server` on 2 shared cores; test_embedded_default_* is the cheap one
def test_server_gets_parent_children_params_and_steps_and_rerun_continues(
        tmp_path, tmetrics, ray_local, mlflow_server, monkeypatch):
    from llmray.runner import StageFailed, fingerprints, run_pipeline

    pipe = _pipe(tmp_path, {"tracking_uri": mlflow_server, "experiment": "trk-server"})
    monkeypatch.setenv("TMETRICS_FAIL_B", "1")
    with pytest.raises(StageFailed):
        run_pipeline(pipe, echo=lambda m: None)
    monkeypatch.delenv("TMETRICS_FAIL_B")
    assert run_pipeline(pipe, echo=lambda m: None) == {"a": "cached", "b": "completed"}

    client, runs = _runs(mlflow_server, "trk-server")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and len(runs) == 3, [r.info.run_name for r in runs]  # no duplicate runs
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parents[0].info.run_id}
    fps = fingerprints(pipe)
    a, b = children["a"], children["b"]
    assert a.data.params["fingerprint"] == fps["a"] and a.data.params["config.steps"] == "4"
    assert b.data.params["input.a"] == fps["a"] and "version.ray" in b.data.params
    assert a.info.status == b.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    history = client.get_metric_history(a.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert history[-1].value == pytest.approx(0.25) or min(history, key=lambda m: -m.step).value == 0.25
    # b failed after logging steps 1..3, then reran: the same run, each step once.
    assert sorted(m.step for m in client.get_metric_history(b.info.run_id, "train_loss")) == [1, 2, 3]
    assert client.get_metric_history(b.info.run_id, "final/final_loss")[0].value == pytest.approx(1 / 3)
    assert "manifest.json" in {f.path for f in client.list_artifacts(b.info.run_id)}
    assert "pipeline.resolved.yaml" in {f.path for f in client.list_artifacts(parents[0].info.run_id)}
    state = json.loads((tmp_path / "runs" / "trk" / "tracking.json").read_text())
    assert state["stages"]["b"]["mlflow"]["run_id"] == b.info.run_id


def test_unreachable_server_warns_once_and_pipeline_goes_on(tmp_path, tmetrics, ray_local):
    from llmray.runner import run_pipeline
    from llmray.tracking import TrackingUnavailable

    dead = f"http://127.0.0.1:{_free_port()}"
    said: list[str] = []
    pipe = _pipe(tmp_path, {"tracking_uri": dead})
    t0 = time.time()
    assert run_pipeline(pipe, echo=said.append) == {"a": "completed", "b": "completed"}
    assert time.time() - t0 < 30
    warnings = [m for m in said if "tracking" in m and "unreachable" in m]
    assert len(warnings) == 1, said
    lines = (tmp_path / "runs" / "trk" / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x).get("step") for x in lines] == [None, 1, 2, 3, 4]  # nothing lost

    required = _pipe(tmp_path / "req", {"tracking_uri": dead, "required": True})
    with pytest.raises(TrackingUnavailable, match="tracking.required"):
        run_pipeline(required, echo=said.append)
    assert not (tmp_path / "req" / "runs" / "trk" / "a").exists()  # failed fast, before any stage


def _tb_scalars(folder: Path, tag: str) -> dict[int, float]:
    """Read scalars back from TensorBoard event files (TFRecord framing + tensorboardX's Event proto;
    the `tensorboard` package and its reader are not installed here)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                if v.tag == tag:
                    out[event.step] = v.simple_value
    return out


def test_embedded_default_and_tensorboard(tmp_path, tmetrics, ray_local, monkeypatch):
    from mlflow import MlflowClient

    from llmray.runner import StageFailed, run_pipeline

    pipe = _pipe(tmp_path, {"tensorboard": True}, a={"kind": "tmetrics", "steps": 3},
                 b={"kind": "tmetrics", "steps": 2, "tracking": {"tensorboard": False}})
    monkeypatch.setenv("TMETRICS_FAIL_B", "1")
    with pytest.raises(StageFailed):
        run_pipeline(pipe, echo=lambda m: None)
    monkeypatch.delenv("TMETRICS_FAIL_B")
    run_pipeline(pipe, echo=lambda m: None)  # b again: the same run continues
    run_dir = tmp_path / "runs" / "trk"
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("trk").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b", "trk"]
    b = next(r for r in runs if r.info.run_name == "b")
    assert b.info.status == "FINISHED" and b.data.tags["llmray.status"] == "completed"
    assert sorted(m.step for m in client.get_metric_history(b.info.run_id, "train_loss")) == [1, 2]
    art = next(r for r in runs if r.info.run_name == "a").info.artifact_uri
    assert art.startswith((run_dir / "mlartifacts").as_uri())  # artifacts stay in the run directory
    assert _tb_scalars(run_dir / "tensorboard" / "a", "train_loss") == pytest.approx({1: 1.0, 2: 0.5, 3: 1 / 3})
    assert not (run_dir / "tensorboard" / "b").exists()  # switched off for this stage
    # Cached on the second run: linked, not logged again.
    run_pipeline(pipe, echo=lambda m: None)
    assert len(client.search_runs([runs[0].info.experiment_id])) == 3
    # Forced: a new execution of a completed stage gets its own nested run, with every step.
    run_pipeline(pipe, force=["a"], echo=lambda m: None)
    a_runs = [r for r in client.search_runs([runs[0].info.experiment_id]) if r.info.run_name == "a"]
    assert len(a_runs) == 2 and {r.data.tags["llmray.status"] for r in a_runs} == {"completed"}
    assert all(len(client.get_metric_history(r.info.run_id, "train_loss")) == 3 for r in a_runs)


def test_wandb_offline_files(tmp_path, tmetrics, ray_local):
    from llmray.runner import run_pipeline

    pipe = _pipe(tmp_path, {"mlflow": False, "wandb": {"mode": "offline", "project": "trk"}},
                 a={"kind": "tmetrics", "steps": 3})
    run_pipeline(pipe, echo=lambda m: None)
    run_dir = tmp_path / "runs" / "trk"
    state = json.loads((run_dir / "tracking.json").read_text())
    run_id = state["stages"]["a"]["wandb"]["run_id"]
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline, sorted(p.name for p in (run_dir / "wandb").iterdir())
    (records,) = offline[0].glob(f"run-{run_id}.wandb")
    assert b"train_loss" in records.read_bytes()  # the step records, in W&B's own (protobuf) log


@pytest.mark.slow
def test_pretrain_killed_and_rerun_streams_steps_to_the_server_once(
        tmp_path, tiny_tokenizer_dir, ray_local, mlflow_server, monkeypatch):
    """A real tiny pretrain stage: its worker is SIGKILLed after a checkpoint, the rerun resumes it.
    The server holds one run for the stage whose loss history has each logged step exactly once,
    and TensorBoard's event files hold the same loss curve."""
    import signal
    import threading

    from llmray.runner import StageFailed, fingerprints, run_dir, run_pipeline
    from llmray.stages import pretrain

    monkeypatch.setitem(STAGES, "tokshards", "test_pretrain_support")
    monkeypatch.setitem(pretrain.Config.INPUTS, "data", ("tokenize", "tokshards"))
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    train = {"steps": 30, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "log_every": 5,
             "eval_every": 100, "checkpoint_every": 10, "eval_batches": 2}
    pipe = parse_pipeline({
        "name": "trkpt", "workdir": str(tmp_path / "runs"),
        "tracking": {"tracking_uri": mlflow_server, "experiment": "trk-pretrain", "tensorboard": True},
        "stages": {"general": {"kind": "tokshards", "tokenizer_dir": str(tiny_tokenizer_dir), "docs": 600},
                   "base": {"kind": "pretrain", "data": "general", "train": train,
                            "resources": {"num_workers": 1, "max_failures": 0}}}})
    root = run_dir(pipe)
    work = root / ".work" / f"base-{fingerprints(pipe)['base'][:12]}"
    metrics = root / ".staging" / "base" / "metrics.jsonl"
    fired = []

    def kill_after_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not fired:
            pid_file = work / "worker_pids" / "rank0.pid"
            if metrics.exists() and pid_file.exists():
                steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines()]
                if max(steps, default=0) >= 15:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                    fired.append(max(steps))
            time.sleep(0.05)

    threading.Thread(target=kill_after_checkpoint, daemon=True).start()
    with pytest.raises(StageFailed):
        run_pipeline(pipe, echo=lambda m: None)
    assert fired
    run_pipeline(pipe, echo=lambda m: None)

    client, runs = _runs(mlflow_server, "trk-pretrain")
    assert sorted(r.info.run_name for r in runs) == ["base", "general", "trkpt"]
    base = next(r for r in runs if r.info.run_name == "base")
    steps = [m.step for m in client.get_metric_history(base.info.run_id, "train_loss")]
    assert sorted(steps) == [5, 10, 15, 20, 25, 30]  # each step once, across the kill and the resume
    assert base.info.status == "FINISHED" and base.data.params["config.train.steps"] == "30"
    val = client.get_metric_history(base.info.run_id, "val_loss")
    assert 0 in {m.step for m in val}
    tb = _tb_scalars(root / "tensorboard" / "base", "train_loss")
    assert sorted(tb) == [5, 10, 15, 20, 25, 30]
