"""`workdir: s3://...` against a real S3-compatible server (moto's, on 127.0.0.1, offline).

One store for the module. A tiny pipeline (curate -> tokenizer -> tokenize -> pretrain with
checkpoints) runs with the store as its run directory; then, with the local mirror deleted (a fresh
machine), the store alone says what is cached, a changed pretrain config reruns only pretrain
(inputs downloaded from the store), and a pretrain killed after a checkpoint resumes from the
checkpoint on the store. The probe kind checks the failure path quickly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from llmray.storage import read_json

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "bpe", "tokens", "base")


@pytest.fixture(scope="module")
def store(s3_endpoint):
    """(workdir URI, pyarrow S3FileSystem) of a bucket on the session's moto server."""
    endpoint, fs = s3_endpoint
    fs.create_dir("bucket")
    return f"s3://bucket/runs?endpoint_override={endpoint}&scheme=http", fs


def _raw(uri: str, mirror: Path) -> dict:
    raw = yaml.safe_load((ROOT / "tests" / "support" / "pipelines" / "tiny.yaml").read_text())
    raw["stages"] = {k: v for k, v in raw["stages"].items() if k in STAGES}
    raw.pop("serve", None)
    raw.update(name="objstore", workdir=uri, mirror_dir=str(mirror))
    return raw


def _pipe(uri, mirror, *overrides):
    from llmray.pipeline import parse_pipeline

    return parse_pipeline(_raw(uri, mirror), "tiny.yaml", overrides=list(overrides))


def _files(fs, path: str) -> dict[str, object]:
    """Relative path -> FileInfo of every object under `path` on the store."""
    from pyarrow.fs import FileSelector, FileType

    infos = fs.get_file_info(FileSelector(path, recursive=True, allow_not_found=True))
    return {i.path[len(path) + 1:]: i for i in infos if i.type == FileType.File}


class _CheckpointWatch:
    """Polls the store (and the local mirror) while a run goes: which checkpoint objects appeared."""

    def __init__(self, fs, work_prefix: str, local_work: Path):
        self.fs, self.prefix, self.local_work = fs, work_prefix, local_work
        self.seen: set[str] = set()
        self.local_ckpts: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.seen |= set(_files(self.fs, self.prefix))
            if self.local_work.exists():
                self.local_ckpts |= {str(p) for p in self.local_work.rglob("train_state.pt")}
            time.sleep(0.3)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def first_run(store, tmp_path_factory, ray_local):
    """The tiny pipeline run once with the store as its workdir (test 1's run, reused after)."""
    from llmray.runner import fingerprints, run_pipeline

    uri, fs = store
    mirror = tmp_path_factory.mktemp("mirror")
    pipe = _pipe(uri, mirror)
    fp = fingerprints(pipe)["base"][:12]
    watch = _CheckpointWatch(fs, f"bucket/runs/objstore/.work/base-{fp}", mirror / "objstore" / ".work")
    lines: list[str] = []
    t0 = time.time()
    try:
        states = run_pipeline(pipe, echo=lines.append)
    finally:
        watch.close()
    return {"pipe": pipe, "mirror": mirror, "states": states, "watch": watch, "lines": lines,
            "elapsed": time.time() - t0}


def test_pipeline_on_the_store_completes_with_manifests_models_and_checkpoints(store, first_run):
    from llmray.runner import fingerprints

    _, fs = store
    fps = fingerprints(first_run["pipe"])
    assert first_run["states"] == {s: "completed" for s in STAGES}, first_run["lines"][-10:]
    objects = _files(fs, "bucket/runs/objstore")
    for stage in STAGES:
        man = read_json(fs, f"bucket/runs/objstore/{stage}/manifest.json")
        assert man["status"] == "completed" and man["fingerprint"] == fps[stage], (stage, man)
        for rel in man["outputs"].values():  # every declared output is on the store (an empty folder cannot be)
            local = first_run["mirror"] / "objstore" / stage / rel
            assert any(k == f"{stage}/{rel}" or k.startswith(f"{stage}/{rel}/") for k in objects) or (
                local.is_dir() and not any(local.iterdir())), (stage, rel)
        mine = {k: i for k, i in objects.items() if k.startswith(f"{stage}/")}
        # manifest.json was written last: no object of the stage is newer.
        assert max(i.mtime for i in mine.values()) <= mine[f"{stage}/manifest.json"].mtime
        assert "upload" in man and man["upload"]["bytes"] > 0
    assert objects["base/model/model.safetensors"].size > 100_000
    assert "pipeline.resolved.yaml" in objects and "report.html" in objects
    assert read_json(fs, "bucket/runs/objstore/tokens/manifest.json")["inputs"] == {
        "corpus": fps["corpus"], "bpe": fps["bpe"]}
    # The checkpoints went straight to the store (never into the local mirror): one worker on this local
    # Ray trains in-process (resources.in_process: auto), which writes its own checkpoint_step<N> folders ...
    seen = first_run["watch"].seen
    assert any(k.endswith("train_state.pt") for k in seen), sorted(seen)[:20]
    assert any("/checkpoint_step" in k and k.endswith("meta.json") for k in seen), sorted(seen)[:20]
    assert not first_run["watch"].local_ckpts
    # ... and the completed stage removed them there.
    assert not any(k.startswith(".work/") for k in objects)
    up = {s: read_json(fs, f"bucket/runs/objstore/{s}/manifest.json")["upload"] for s in STAGES}
    print(f"\nupload per stage (bytes, s): {up}; pipeline wall time {first_run['elapsed']:.1f}s")


@pytest.mark.slow  # ~45 s; test_runner covers rerunning only a changed stage in CI
def test_fresh_mirror_sees_the_store_and_reruns_only_the_changed_stage(store, first_run, tmp_path):
    from llmray.runner import fingerprints, plan, run_pipeline

    uri, fs = store
    mirror = tmp_path / "fresh"  # a new machine: nothing local
    pipe = _pipe(uri, mirror)
    assert {i.name: i.state for i in plan(pipe)} == {s: "cached" for s in STAGES}
    changed = _pipe(uri, mirror, "stages.base.train.lr=0.002", "stages.base.train.steps=20")
    assert [i.state for i in plan(changed)] == ["cached", "cached", "cached", "stale"]
    states = run_pipeline(changed, echo=lambda *_: None)
    assert states == {"corpus": "cached", "bpe": "cached", "tokens": "cached", "base": "completed"}
    run = mirror / "objstore"
    # pretrain's input came down whole; the stages it does not read only as far as the report needs.
    assert (run / "tokens" / "train").is_dir() and any((run / "tokens" / "train").iterdir())
    assert (run / "corpus" / "manifest.json").exists() and not (run / "corpus" / "data").exists()
    man = read_json(fs, "bucket/runs/objstore/base/manifest.json")
    assert man["status"] == "completed" and man["fingerprint"] == fingerprints(changed)["base"]
    assert man["metrics"]["steps"] == 20
    assert {i.state for i in plan(changed)} == {"cached"}


def _kill_after(metrics: Path, pid_file: Path, min_step: int, fired: list) -> None:
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            if metrics.exists() and pid_file.exists():
                steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if x.strip()]
                if max(steps, default=0) >= min_step:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                    fired.append(max(steps))
                    return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


@pytest.mark.slow  # ~55 s; the pipeline-on-the-store test covers checkpoints to the store in CI
def test_killed_pretrain_resumes_on_a_fresh_machine_from_the_store(store, first_run, tmp_path, monkeypatch):
    """The only Ray Train worker is SIGKILLed after the step-10/20 checkpoints with no restarts left:
    the stage fails (a failed manifest on the store, checkpoints on the store). With the local mirror
    gone, the rerun downloads the inputs and resumes from the store's checkpoint, not from step 0."""
    from llmray.runner import StageFailed, fingerprints, run_pipeline

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # see test_pretrain.py: tiny steps
    uri, fs = store
    mirror = tmp_path / "m1"
    over = ("stages.base.train.steps=50", "stages.base.train.checkpoint_every=10",
            "stages.base.resources.max_failures=0", "stages.base.resources.in_process=false")  # a worker to kill
    pipe = _pipe(uri, mirror, *over)
    work = f"base-{fingerprints(pipe)['base'][:12]}"
    run = mirror / "objstore"
    fired: list = []
    _kill_after(run / ".staging" / "base" / "metrics.jsonl", run / ".work" / work / "worker_pids" / "rank0.pid",
                25, fired)
    with pytest.raises(StageFailed):
        run_pipeline(pipe, echo=lambda *_: None)
    assert fired, "the worker was never killed"
    man = read_json(fs, "bucket/runs/objstore/base/manifest.json")
    assert man["status"] == "failed" and man["fingerprint"] == fingerprints(pipe)["base"]
    assert "log.txt" in _files(fs, "bucket/runs/objstore/base")
    assert any(k.endswith("train_state.pt") for k in _files(fs, f"bucket/runs/objstore/.work/{work}"))

    shutil.rmtree(mirror)  # the machine is gone; only the store remains
    lines: list[str] = []
    states = run_pipeline(_pipe(uri, tmp_path / "m2", *over), echo=lines.append)
    assert states["base"] == "completed", lines[-5:]
    recs = [json.loads(x) for x in (tmp_path / "m2" / "objstore" / "base" / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in recs if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 10 and resumed[0]["step"] % 10 == 0, resumed
    assert not any(r.get("step") == 0 for r in recs if "event" not in r)  # no step-0 evaluation again
    print(f"\nkilled after step {fired[0]}; resumed from the store's step-{resumed[0]['step']} checkpoint")
    man = read_json(fs, "bucket/runs/objstore/base/manifest.json")
    assert man["status"] == "completed" and man["metrics"]["steps"] == 50
    assert not _files(fs, f"bucket/runs/objstore/.work/{work}")  # checkpoints removed once completed


def test_probe_failure_is_recorded_on_the_store_and_status_reads_it(store, tmp_path, ray_local, monkeypatch,
                                                                    capsys):
    from llmray.cli import main
    from llmray.runner import StageFailed, run_pipeline
    from llmray.stages import STAGES as KINDS

    monkeypatch.setitem(KINDS, "probe", "probe_stage")
    uri, fs = store
    raw = {"name": "probe", "workdir": uri, "mirror_dir": str(tmp_path / "m"),
           "stages": {"a": {"kind": "probe", "n": 5}, "b": {"kind": "probe", "n": 3, "data": ["a"]}}}
    from llmray.pipeline import parse_pipeline

    monkeypatch.setenv("PROBE_FAIL_B", "1")
    with pytest.raises(StageFailed, match="injected failure in b"):
        run_pipeline(parse_pipeline(json.loads(json.dumps(raw))), echo=lambda *_: None)
    assert read_json(fs, "bucket/runs/probe/a/manifest.json")["status"] == "completed"
    man = read_json(fs, "bucket/runs/probe/b/manifest.json")
    assert man["status"] == "failed" and "injected failure" in man["error"]
    assert set(_files(fs, "bucket/runs/probe/b")) == {"manifest.json", "log.txt"}  # no half-written output
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(raw))
    shutil.rmtree(tmp_path / "m")
    assert main(["status", str(p)]) == 0
    out = capsys.readouterr().out
    assert "bucket/runs/probe (local mirror" in out
    assert [line.split()[2] for line in out.splitlines()[1:]] == ["cached", "failed"]
    monkeypatch.delenv("PROBE_FAIL_B")
    states = run_pipeline(parse_pipeline(json.loads(json.dumps(raw))), echo=lambda *_: None)
    assert states == {"a": "cached", "b": "completed"}
    assert json.loads((tmp_path / "m" / "probe" / "b" / "sum.json").read_text())["sum"] == 3 + 10


def test_serve_and_report_read_a_fresh_mirror_from_the_store(store, first_run, tmp_path):
    """`llmray serve` (its spec) and `llmray report` on a machine that never ran the pipeline: the
    served model comes down whole, the other stages only as far as the report reads them."""
    import argparse

    from llmray.cli import cmd_report
    from llmray.serve.spec import resolve_spec

    uri, _ = store
    mirror = tmp_path / "fresh"
    pipe = _pipe(uri, mirror, "serve.models=[base]")
    spec = resolve_spec(pipe)
    run = mirror / "objstore"
    assert [m["id"] for m in spec["models"]] == ["objstore/base"]
    assert Path(spec["models"][0]["dir"]) == (run / "base" / "model").resolve()
    assert (run / "base" / "model" / "model.safetensors").stat().st_size > 100_000
    assert (run / "corpus" / "manifest.json").exists() and not (run / "corpus" / "data").exists()
    assert cmd_report(pipe, argparse.Namespace(out=None, watch=0)) == 0
    html = (run / "report.html").read_text()
    assert all(stage in html for stage in STAGES) and "completed" in html


def test_checkpoint_versions_on_the_store_latest_pointer_last(store, tmp_path):
    """push_checkpoint: folder first, latest.json last, older versions deleted; pull_checkpoint
    fetches what latest.json points at, and ignores a newer folder whose upload never finished."""
    from llmray.storage import Remote, pull_checkpoint, push_checkpoint

    _, fs = store
    remote = Remote(fs, "bucket/ckpt-test/.work/ppo-abc")
    assert pull_checkpoint(remote, tmp_path / "none") is False
    for it in (1, 2):
        ck = tmp_path / f"local{it}"
        (ck / "sub").mkdir(parents=True)
        (ck / "state.json").write_text(json.dumps({"iteration": it}))
        (ck / "sub" / "weights.bin").write_bytes(os.urandom(1000 * it))
        assert push_checkpoint(remote, ck, f"{it:06d}") == 1000 * it + len(json.dumps({"iteration": it}))
    assert sorted(p for p in _files(fs, remote.path)) == ["ckpt-000002/state.json", "ckpt-000002/sub/weights.bin",
                                                          "latest.json"]
    # An upload cut off before its pointer: the store still resumes from iteration 2.
    with fs.open_output_stream(remote.join("ckpt-000003", "state.json")) as f:
        f.write(b'{"iteration": 3}')
    dest = tmp_path / "fresh" / "ckpt"
    dest.parent.mkdir()
    assert pull_checkpoint(remote, dest) is True
    assert json.loads((dest / "state.json").read_text()) == {"iteration": 2}
    assert (dest / "sub" / "weights.bin").read_bytes() == (tmp_path / "local2" / "sub" / "weights.bin").read_bytes()
    assert not (dest.parent / "ckpt.pull").exists()
