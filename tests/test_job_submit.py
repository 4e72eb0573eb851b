"""`ray job submit --working-dir . -- llmray run <pipeline>` against a local head started here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmray.testing import free_port

# `ray start` + `ray job submit` in subprocesses: ~80 s on 2 cores, so `make test-all` runs it, not CI.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

PIPELINE = """\
name: submitted
workdir: {workdir}
stages:
  corpus:
    kind: curate
    sources: [{{type: python-docs, modules: [json, textwrap, string, heapq]}}]
  bpe: {{kind: tokenizer, data: corpus, vocab_size: 512}}
"""


@pytest.fixture
def ray_head(tmp_path):
    """A real `ray start --head --block` on 127.0.0.1 with token auth; its process group is ended at
    teardown (never `ray stop`, which would end every Ray on the machine)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    temp = Path("/tmp") / f"rayjob{gcs}"  # short: Ray's socket paths must stay under 107 bytes
    start = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs),
             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
             "--include-dashboard", "true", "--object-store-memory", str(300 * 2**20), "--temp-dir", str(temp),
             "--disable-usage-stats"]
    # Ports of its own for every agent: the defaults (e.g. the dashboard agent's 52365) are taken by
    # the test session's Ray, and an agent that cannot bind leaves the head with no job agent.
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--ray-client-server-port"):
        start += [flag, str(free_port())]
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:  # the dashboard (job API) answers once the head is up
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", f"http://127.0.0.1:{dash}"],
                                   env=env, capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            assert time.time() < deadline, probe.stderr[-2000:]
            time.sleep(2)
        yield env, f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


def test_ray_job_submit_runs_the_pipeline(ray_head, tmp_path):
    env, dashboard, gcs = ray_head
    pipe = tmp_path / "submitted.yaml"
    pipe.write_text(PIPELINE.format(workdir=tmp_path / "runs"))
    t0 = time.time()
    cmd = [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", ".git", "bench"]}),
           "--", "llmray", "run", str(pipe)]
    for _ in range(30):  # the head's job agent comes up a little after its dashboard
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        if "No available agent to submit job" not in out:
            break
        time.sleep(3)
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out
    for stage in ("corpus", "bpe"):
        man = json.loads((tmp_path / "runs" / "submitted" / stage / "manifest.json").read_text())
        assert man["status"] == "completed"
    tok = tmp_path / "runs" / "submitted" / "bpe" / "tokenizer" / "tokenizer.json"
    assert tok.exists()
    # The job joined the head we started (RAY_ADDRESS from the job environment), not a new local Ray.
    assert "Started a local Ray instance" not in out
    assert time.time() - t0 < 600
