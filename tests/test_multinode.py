"""A real multi-node Ray cluster (head + 2 trainer nodes on 127.0.0.1), a tiny pipeline spread across it,
and a trainer node removed during pretraining: the run completes from the checkpoint.

The cluster runs in a subprocess (tests/support/multinode_cluster.py) so the pytest session's own Ray
(`ray_local`) is never touched; the script writes result.json and leaves the run directory behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A two-node Ray cluster of its own in a subprocess: minutes on 2 cores, so `make test-all` runs it, not CI.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
DATA_STAGES = ("corpus", "bpe", "tokens")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def multinode(tmp_path_factory):
    out = tmp_path_factory.mktemp("multinode")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(HERE / "support" / "multinode_cluster.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=480, cwd=HERE.parent)
    assert (out / "result.json").exists(), proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "result.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, result


def test_stages_spread_over_nodes_by_placement(multinode):
    _, res = multinode
    head, workers = res["head"], set(res["worker_nodes"])
    assert len(res["nodes_at_start"]) == 3 and res["driver_node"] == head
    seen = res["seen"]
    # Data stages: their Ray Data tasks and actors (and curate's dedup shard actors) ran on the head,
    # the one node labelled node-group=cpu. The only exception is Ray Data's own parquet footer-reader
    # helper actor, which Ray 2.60 starts without the Dataset's label selector (metadata only).
    # (Samples every 0.2 s catch some of the short tasks: any read/map/shard task on the head counts.)
    work = ("ray::Read", "ray::Map", "ray::ListFiles", "ray::KeyShard", "ray::LSHShard")
    for stage in DATA_STAGES:
        on_head = set(seen.get(stage, {}).get(head, []))
        assert any(t.startswith(work) for t in on_head), f"{stage}: no data work seen on the head ({on_head})"
        elsewhere = {t for nid, titles in seen[stage].items() if nid != head for t in titles}
        assert {t for t in elsewhere if not t.startswith("ray::FooterReader")} == set(), (stage, elsewhere)
    # Pretraining: the two Ray Train workers need a gpu_node resource each, so they ran on the two
    # trainer nodes (one each), and on the replacement after the loss.
    trainers = {nid for nid, titles in seen["base"].items() if "ray::RayTrainWorker" in titles}
    assert workers <= trainers and head not in trainers
    assert set(res["ranks_before"].values()) == workers
    assert len({head, *trainers}) >= 3  # work on three distinct nodes, four with the replacement


def test_lost_node_resumes_from_checkpoint(multinode):
    out, res = multinode
    run = out / "runs" / "multinode"
    # The node hosting rank 1 was removed after the step-20 checkpoint; a replacement joined.
    assert res["killed_node"] == res["ranks_before"]["rank1"] and res["killed_at_step"] >= 25
    assert res["killed_node"] not in res["nodes_at_end"] and res["replacement_node"] in res["nodes_at_end"]
    assert res["replacement_node"] in res["ranks_after"].values()
    assert res["states"] == {s: "completed" for s in (*DATA_STAGES, "base")}
    for stage in (*DATA_STAGES, "base"):
        man = json.loads((run / stage / "manifest.json").read_text())
        assert man["status"] == "completed", stage
    man = json.loads((run / "base" / "manifest.json").read_text())
    assert man["metrics"]["steps"] == 80 and man["metrics"]["workers"] == 2
    assert (run / "base" / "model" / "model.safetensors").exists()
    recs = _records(run / "base" / "metrics.jsonl")
    resumed = [i for i, r in enumerate(recs) if r.get("event") == "resumed"]
    assert len(resumed) == 1, "Ray Train restarted the worker group exactly once"
    restart = recs[resumed[0]]["step"]
    last_before = max(r["step"] for r in recs[:resumed[0]] if "train_loss" in r)
    # Restored from a checkpoint (not from scratch), losing at most one checkpoint interval.
    assert restart % 10 == 0 and restart >= 20 and 0 <= last_before - restart <= 10
    steps_after = [r["step"] for r in recs[resumed[0] + 1:] if "train_loss" in r]
    assert steps_after == list(range(restart + 5, 81, 5))
    # The checkpoints lived under the run directory (shared storage); the stage cleaned them up.
    assert not list(run.glob(".work/base-*"))
