"""Runner: DAG order, fingerprint caching (Marin style), failure handling, --stages / --force."""

from __future__ import annotations

import json

import pytest

from llmray.pipeline import parse_pipeline
from llmray.runner import fingerprints, plan, read_manifest, run_dir, run_pipeline
from llmray.stages import STAGES


@pytest.fixture(autouse=True)
def probe_kind(monkeypatch):
    monkeypatch.setitem(STAGES, "probe", "probe_stage")


def _pipe(tmp_path, **changes):
    raw = {
        "name": "p",
        "workdir": str(tmp_path / "runs"),
        "stages": {
            "a": {"kind": "probe", "n": 5},
            "b": {"kind": "probe", "n": 3, "data": ["a"]},
            "c": {"kind": "probe", "n": 2},
            "d": {"kind": "probe", "n": 1, "data": ["b", "c"]},
        },
    }
    for stage, upd in changes.items():
        raw["stages"][stage].update(upd)
    return parse_pipeline(raw)


def _runs(tmp_path, stage):
    f = tmp_path / "runs" / f"runs-{stage}.txt"
    return int(f.read_text()) if f.exists() else 0


def test_rerun_is_cached_and_a_change_or_an_edited_input_reruns_exactly_its_dependents(tmp_path, ray_local):
    """One run, then in sequence on it (each step a claim; one run keeps the Ray work small):
    a rerun is fully cached; a description is not configuration; changing stage b reruns b and its
    dependent d only; editing b's input file in place (same config) reruns exactly its readers."""
    data = tmp_path / "lines.txt"
    data.write_text("one\ntwo\n")

    def pipe_(**b):
        return _pipe(tmp_path, b={"path": str(data), **b})

    pipe = pipe_()
    states = run_pipeline(pipe, echo=lambda m: None)
    assert list(states) == ["a", "b", "c", "d"]
    man = read_manifest(run_dir(pipe) / "d")
    assert man["status"] == "completed"
    assert read_manifest(run_dir(pipe) / "b")["metrics"]["sum"] == 3 + 10 + 2  # 0..2, a's 10, 2 lines
    assert man["metrics"]["sum"] == 0 + 15 + 1  # d = 0 + b + c (a=10, c=1)
    assert man["inputs"] == {"b": fingerprints(pipe)["b"], "c": fingerprints(pipe)["c"]}
    assert (run_dir(pipe) / "pipeline.resolved.yaml").exists()
    assert (run_dir(pipe) / "a" / "log.txt").read_text().count("sum 10") == 1
    assert not (run_dir(pipe) / ".staging" / "a").exists()

    # The same pipeline again: everything cached, nothing ran.
    again = run_pipeline(pipe_(), echo=lambda m: None)
    assert set(again.values()) == {"cached"}
    assert [_runs(tmp_path, s) for s in "abcd"] == [1, 1, 1, 1]
    assert {i.state for i in plan(pipe)} == {"cached"}
    # A description is documentation, not configuration: it does not invalidate the cache.
    assert set(run_pipeline(pipe_(description="hello"), echo=lambda m: None).values()) == {"cached"}

    # Changing one stage reruns it and its dependents only.
    changed = pipe_(n=4)
    assert [i.state for i in plan(changed)] == ["cached", "stale", "cached", "stale"]
    states = run_pipeline(changed, echo=lambda m: None)
    assert states == {"a": "cached", "b": "completed", "c": "cached", "d": "completed"}
    assert [_runs(tmp_path, s) for s in "abcd"] == [1, 2, 1, 2]

    # Editing an input file in place (same path, the config did not change) reruns exactly its readers.
    data.write_text("one\ntwo\nthree\n")
    assert [i.state for i in plan(changed)] == ["cached", "stale", "cached", "stale"]
    states = run_pipeline(pipe_(n=4), echo=lambda m: None)
    assert states == {"a": "cached", "b": "completed", "c": "cached", "d": "completed"}
    assert [_runs(tmp_path, s) for s in "abcd"] == [1, 3, 1, 3]
    assert read_manifest(run_dir(pipe) / "b")["metrics"]["sum"] == 6 + 10 + 3


def test_failure_leaves_no_completed_manifest_and_next_run_redoes_it(tmp_path, ray_local, monkeypatch):
    from llmray.runner import StageFailed

    run_pipeline(_pipe(tmp_path), stages=["a"], echo=lambda m: None)
    monkeypatch.setenv("PROBE_FAIL_B", "1")
    with pytest.raises(StageFailed, match="injected failure in b"):
        run_pipeline(_pipe(tmp_path, b={"n": 7}), echo=lambda m: None)
    man = read_manifest(run_dir(_pipe(tmp_path)) / "b")
    assert man["status"] == "failed" and "injected failure" in man["error"]
    assert not (run_dir(_pipe(tmp_path)) / "b" / "partial.txt").exists()  # half-written output not in place
    assert "injected failure" in (run_dir(_pipe(tmp_path)) / "b" / "log.txt").read_text()
    assert read_manifest(run_dir(_pipe(tmp_path)) / "d") is None  # never started

    monkeypatch.delenv("PROBE_FAIL_B")
    states = run_pipeline(_pipe(tmp_path, b={"n": 7}), echo=lambda m: None)
    assert states["a"] == "cached" and states["b"] == "completed" and states["d"] == "completed"
    assert _runs(tmp_path, "b") == 2
    assert json.loads((run_dir(_pipe(tmp_path)) / "b" / "sum.json").read_text())["sum"] == 21 + 10


def test_stages_and_force(tmp_path, ray_local):
    pipe = _pipe(tmp_path)
    states = run_pipeline(pipe, stages=["b"], echo=lambda m: None)
    assert states == {"a": "completed", "b": "completed"}  # b plus what it needs, nothing else
    assert read_manifest(run_dir(pipe) / "c") is None
    states = run_pipeline(pipe, stages=["b"], force=["a"], echo=lambda m: None)
    assert states == {"a": "completed", "b": "cached"}  # same fingerprint: dependents stay valid
    with pytest.raises(KeyError, match="zz"):
        run_pipeline(pipe, stages=["zz"], echo=lambda m: None)


@pytest.mark.integration  # starts a Ray of its own
def test_a_local_ray_started_by_llmray_stays_on_loopback():
    """`llmray run` without a cluster starts Ray on 127.0.0.1 even though `ray` was imported first
    (Ray reads its loopback switch at import). Run in a fresh process: the session's Ray is untouched."""
    import os
    import subprocess
    import sys

    code = ("import ray\nfrom llmray.rayutil import init_ray\ninit_ray()\n"
            "print('NODES', sorted(n['NodeManagerAddress'] for n in ray.nodes()))\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env,
                          check=False)
    assert "NODES ['127.0.0.1']" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
