"""Experiment tracking (llmray.tracking): a real MLflow server on 127.0.0.1 receives a real curate stage
(with its live progress records) and a pipeline whose rerun after a failure continues the same runs; an
unreachable server warns once (or fails fast when required); the embedded default store, TensorBoard
event files, W&B offline files; models logged as MLflow transformers models and registered; a fresh
mirror of an object-store run reopens its runs.

This module is also a tiny stage kind (`tmetrics`, registered per test): it writes step-indexed
records through MetricsWriter like a training stage, without Ray or a model, so the tracking path
is tested in seconds; `test_pretrain_killed_and_rerun_*` (slow) does it with a real tiny training stage
and a SIGKILLed worker. The tracking server (MLflow's own app under uvicorn) is started as the module
starts, so it boots (8-30 s on 2 shared cores) while the tests before the server tests run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
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
from llmray.tracking.console import Console

VERSION = "1"


class Config(StageConfig):
    INPUTS = {"data": ("tmetrics",)}
    kind: Literal["tmetrics"] = Field("tmetrics", description="kind")
    data: list[str] | None = Field(None, description="Input stages.")
    steps: int = Field(4, ge=1, description="Records to write.")
    pause_s: float = Field(0.0, ge=0, description="Sleep between records.")
    model_from: str | None = Field(None, description="A saved model folder copied to the output `model`.")


def run(cfg: Config, ctx) -> StageResult:
    writer = ctx.metrics_writer()
    writer.write({"event": "data", "docs": 3})
    for step in range(1, cfg.steps + 1):
        writer.write({"step": step, "train_loss": 1.0 / step, "tokens_per_s": 100.0 * step, "lr": 0.1})
        time.sleep(cfg.pause_s)
    if os.environ.get(f"TMETRICS_FAIL_{ctx.name.upper()}"):
        raise RuntimeError(f"injected failure in {ctx.name}")
    (ctx.out_dir / "done.txt").write_text("ok")
    outputs = {"done": "done.txt"}
    if cfg.model_from:  # stands in for a trained model
        shutil.copytree(cfg.model_from, ctx.out_dir / "model")
        outputs["model"] = "model"
    return StageResult(metrics={"final_loss": 1.0 / cfg.steps}, outputs=outputs)


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


# The MLflow tracking server's own ASGI app (what `mlflow server` runs) under uvicorn in one process:
# `mlflow server` itself initialises the stores, then starts uvicorn in a second Python process that
# imports mlflow again, which doubles the 8-30 s start-up on 2 shared cores.
SERVE = ("import os, sys, uvicorn; from mlflow.server import constants as c; "
         "os.environ[c.BACKEND_STORE_URI_ENV_VAR] = sys.argv[1]; os.environ[c.ARTIFACT_ROOT_ENV_VAR] = sys.argv[2]; "
         "uvicorn.run('mlflow.server.fastapi_app:app', host='127.0.0.1', port=int(sys.argv[3]), log_level='warning')")


@pytest.fixture(scope="module", autouse=True)
def _server_process(request, tmp_path_factory):
    """Start the tracking server as this module starts when one of its selected tests needs it, so it
    boots while the tests before those run; `mlflow_server` waits for it."""
    if not any("mlflow_server" in getattr(item, "fixturenames", ()) and item.module is request.module
               for item in request.session.items):
        yield None
        return
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(d / "server.log", "w")  # noqa: SIM115 - the server's output, closed at the end
    proc = subprocess.Popen([sys.executable, "-c", SERVE, f"sqlite:///{d}/m.db", str(d / "artifacts"), str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    yield proc, f"http://127.0.0.1:{port}", d
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def mlflow_server(_server_process):
    """A real MLflow tracking server on 127.0.0.1 with its own SQLite store: its URI, once it answers."""
    import urllib.request

    proc, uri, d = _server_process
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            return uri
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)


def _runs(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


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


def test_model_logged_as_transformers_flavour_and_registered(tmp_path, tmetrics, ray_local, tiny_causal_dir):
    """`log_models` + `register` on the embedded store: the stage's model folder becomes an MLflow
    transformers model of its run, loads back, and has a registry version; a model MLflow cannot log
    warns and the run goes on, or stops it with `required: true`."""
    import mlflow
    from mlflow import MlflowClient

    from llmray.runner import run_pipeline
    from llmray.tracking import TrackingUnavailable

    bad = tmp_path / "bad"
    shutil.copytree(tiny_causal_dir, bad)
    (bad / "config.json").write_text(json.dumps({"architectures": ["NoSuchModel"]}))
    said: list[str] = []
    pipe = _pipe(tmp_path, {"log_models": ["a", "b"], "register": "llm"},
                 a={"kind": "tmetrics", "steps": 1, "model_from": str(tiny_causal_dir)},
                 b={"kind": "tmetrics", "steps": 1, "model_from": str(bad)})
    assert run_pipeline(pipe, echo=said.append) == {"a": "completed", "b": "completed"}
    assert [m for m in said if "model of b could not be logged" in m and "NoSuchModel" in m], said

    root = tmp_path / "runs" / "trk"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    a = next(r for r in client.search_runs([client.get_experiment_by_name("trk").experiment_id])
             if r.info.run_name == "a")
    model_uri = a.data.tags["llmray.model_uri"]
    assert json.loads((root / "tracking.json").read_text())["stages"]["a"]["mlflow"]["model_uri"] == model_uri
    (version,) = client.search_model_versions("name='llm-a'")
    assert version.run_id == a.info.run_id and not client.search_model_versions("name='llm-b'")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        loaded = mlflow.transformers.load_model(f"models:/llm-a/{version.version}", return_type="components")
        files = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl"))) / "model"
    finally:
        mlflow.set_tracking_uri(previous)
    assert type(loaded["model"]).__name__ == "LlamaForCausalLM" and loaded["task"] == "text-generation"
    assert (files / "model.safetensors").read_bytes() == (tiny_causal_dir / "model.safetensors").read_bytes()

    required = _pipe(tmp_path / "req", {"log_models": True, "required": True},
                     b={"kind": "tmetrics", "steps": 1, "model_from": str(bad)})
    with pytest.raises(TrackingUnavailable, match="model of b could not be logged"):
        run_pipeline(required, echo=said.append)


@pytest.mark.integration  # a server (moto's S3), no Ray
def test_fresh_mirror_of_an_object_store_run_reopens_its_runs(tmp_path, tmetrics, s3_endpoint):
    """`workdir: s3://...`: a rerun from another machine (an empty local mirror) downloads tracking.json
    and the embedded mlflow.db from the store, so it continues the same parent and stage runs."""
    from mlflow import MlflowClient

    from llmray.runner import run_store
    from llmray.tracking import Tracker

    endpoint, fs = s3_endpoint
    fs.create_dir("trkbucket")
    uri = f"s3://trkbucket/runs?endpoint_override={endpoint}&scheme=http"

    def machine(mirror: Path, status: str) -> dict:
        pipe = parse_pipeline({"name": "trk", "workdir": uri, "mirror_dir": str(mirror),
                               "stages": {"a": {"kind": "tmetrics", "steps": 2}}})
        store = run_store(pipe)
        store.local.mkdir(parents=True)
        tracker = Tracker(pipe, store.local, echo=print, put_file=store.put_file, get_file=store.get_file)
        tracker.pipeline_started()
        metrics = store.local / "a" / "metrics.jsonl"
        metrics.parent.mkdir()
        metrics.write_text("".join(json.dumps({"step": s, "train_loss": 1 / s}) + "\n" for s in (1, 2)))
        tracker.stage_started("a", pipe.stages["a"], "f" * 20, {}, [metrics], 2)
        tracker.stage_finished("a", {"status": status, "metrics": {}}, [])
        tracker.pipeline_finished(status, [])
        return json.loads((store.local / "tracking.json").read_text())

    first = machine(tmp_path / "m1", "failed")
    second = machine(tmp_path / "m2", "completed")
    assert second["pipeline"] == first["pipeline"] and second["stages"]["a"]["mlflow"]["run_id"] == \
        first["stages"]["a"]["mlflow"]["run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'm2' / 'trk' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("trk").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "trk"] and {r.info.status for r in runs} == {"FINISHED"}


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


# The cheapest real stage: curate without its actor pools and extra barriers (the tmetrics test below covers
# several stages, failure and rerun against the same server in about a second).
OFF = {"enabled": False}
REAL = {"corpus": {"kind": "curate", "workers": 1, "batch_size": 16, "boilerplate": OFF, "toxicity": OFF,
                   "quality": OFF, "near_dedup": OFF,
                   "sources": [{"type": "python-docs", "modules": ["json", "os", "re", "pathlib", "argparse"]}]}}


def test_server_gets_a_real_pipeline_with_curate_progress(tmp_path, ray_local, mlflow_server, monkeypatch):
    """A curate stage against a real tracking server: one parent run, a child for the stage with its params,
    curate's live progress records (docs read, kept) step-indexed, its funnel as final figures; and the plain
    console prints curate's docs in -> kept while it runs."""
    from llmray.curate import progress
    from llmray.runner import fingerprints, run_pipeline

    monkeypatch.setattr(progress, "INTERVAL_S", 0.2)
    out = io.StringIO()
    console = Console(out, tty=False, interval_s=0.5)
    pipe = parse_pipeline({"name": "real", "workdir": str(tmp_path / "runs"), "stages": REAL,
                           "tracking": {"tracking_uri": mlflow_server, "experiment": "trk-real"}})
    assert run_pipeline(pipe, echo=console.echo, listeners=[console]) == {"corpus": "completed"}

    corpus_dir = tmp_path / "runs" / "real" / "corpus"
    man = json.loads((corpus_dir / "manifest.json").read_text())["metrics"]
    prog = [r for r in map(json.loads, (corpus_dir / "metrics.jsonl").read_text().splitlines())
            if r.get("event") == "progress"]
    assert len(prog) >= 2, prog
    ins, kept = [r["docs_in"] for r in prog], [r["docs_kept"] for r in prog]
    assert ins == sorted(ins) and kept == sorted(kept) and (ins[0] < ins[-1] or kept[0] < kept[-1]), prog
    assert (ins[-1], kept[-1], prog[-1]["quarantined"]) == (man["docs_in"], man["docs_out"], man["quarantined"])
    assert re.search(r"^\[llmray\]   corpus \(curate\) · [\d.]+k? docs in → [\d.]+k? kept · [\d.]+k? docs/s · elapsed",
                     out.getvalue(), re.M), out.getvalue()

    client, runs = _runs(mlflow_server, "trk-real")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and sorted(children) == ["corpus"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    fps = fingerprints(pipe)
    corpus = children["corpus"]
    assert corpus.data.params["fingerprint"] == fps["corpus"] and corpus.data.params["config.workers"] == "1"
    assert corpus.data.params["config.near_dedup.enabled"] == "False" and "version.ray" in corpus.data.params
    history = client.get_metric_history(corpus.info.run_id, "docs_in")  # step = documents read
    # (records of one batch share a timestamp: MLflow keeps one of two equal (step, value) points)
    assert {m.step for m in history} == {r["step"] for r in prog} and all(m.step == m.value for m in history)
    assert max(m.value for m in history) == man["docs_in"]
    assert client.get_metric_history(corpus.info.run_id, "final/docs_out")[0].value == man["docs_out"]
    assert {"manifest.json", "log.txt"} <= {f.path for f in client.list_artifacts(corpus.info.run_id)}


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
                            "resources": {"num_workers": 1, "max_failures": 0,
                                          "in_process": False}}}})  # a worker process to kill
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
