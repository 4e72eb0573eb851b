"""A real three-node Ray cluster on this machine, a tiny pipeline across it, and a trainer node lost mid-run.

Run as a script (`python tests/support/multinode_cluster.py OUT_DIR`) so the cluster never shares a process
with the pytest session's own Ray. Data flow:

  ray.cluster_utils.Cluster on 127.0.0.1, with its own RAY_TMPDIR (so `ray.init(address="auto")` of
  other runs on the machine never finds it):
    head      2 CPUs, label node-group=cpu     <- driver, curate/tokenizer/tokenize (placement labels)
    worker A  1 CPU,  gpu_node: 1 (label gpu)  <- Ray Train rank 0 or 1 (custom resource, one per node)
    worker B  1 CPU,  gpu_node: 1 (label gpu)  <- the other rank
  -> llmray.runner.run_pipeline(curate -> tokenizer -> tokenize -> pretrain with 2 workers)
  -> a watcher thread: once metrics.jsonl shows a step past the first checkpoint, find the node that
     hosts rank 1 (its pid file -> parent raylet), `cluster.remove_node` it (no graceful stop, as a
     crashed host), and add a replacement trainer node (as an autoscaler would)
  -> a sampler thread records, per node, the titles of Ray worker processes doing work ("ray::...")
  -> OUT_DIR/result.json: nodes, what ran where, the kill, the pipeline's states. The test asserts.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

PIPELINE = """
name: multinode
workdir: {workdir}
stages:
  corpus:
    kind: curate
    sources:
      - {{type: python-docs, modules: [json, os, re, pathlib, collections, itertools, functools, string,
                                      textwrap, random, statistics, heapq, bisect, csv, argparse, logging]}}
    workers: 2
    placement: {{labels: {{node-group: cpu}}}}
  bpe: {{kind: tokenizer, data: corpus, vocab_size: 1024, placement: {{labels: {{node-group: cpu}}}}}}
  tokens: {{kind: tokenize, data: corpus, tokenizer: bpe, seq_len: 128, val_fraction: 0.1, actors: 2,
            placement: {{labels: {{node-group: cpu}}}}}}
  base:
    kind: pretrain
    data: tokens
    model: {{preset: tiny}}
    train: {{steps: {steps}, micro_batch_size: 8, lr: 0.003, warmup_steps: 5, log_every: 5, eval_every: 40,
            checkpoint_every: {every}, eval_batches: 2}}
    resources: {{num_workers: 2, cpus_per_worker: 1, custom: {{gpu_node: 1}}, max_failures: 2}}
"""
STEPS, EVERY, KILL_AFTER = 80, 10, 25

HEAD = dict(num_cpus=2, object_store_memory=256 * 2**20, node_ip_address="127.0.0.1",
            labels={"node-group": "cpu"}, resources={"cpu_node": 1}, include_dashboard=False)
TRAINER_NODE = dict(num_cpus=1, object_store_memory=128 * 2**20, node_ip_address="127.0.0.1",
                    labels={"node-group": "gpu"}, resources={"gpu_node": 1})


def raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def node_of_pid(pid: int, nodes: dict) -> str | None:
    """The node id whose raylet is an ancestor of process `pid` (Ray workers are raylet children)."""
    import psutil

    by_raylet = {raylet_pid(n): nid for nid, n in nodes.items()}
    try:
        proc = psutil.Process(pid)
        for parent in [proc, *proc.parents()]:
            if parent.pid in by_raylet:
                return by_raylet[parent.pid]
    except psutil.NoSuchProcess:
        return None
    return None


STAGES = ("corpus", "bpe", "tokens", "base")
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # per-node infrastructure, not stage work


def running_stage(run: Path) -> str | None:
    for name in STAGES:
        try:
            if json.loads((run / name / "manifest.json").read_text()).get("status") == "running":
                return name
        except (OSError, json.JSONDecodeError):
            continue
    return None


class Sampler(threading.Thread):
    """Every 0.2 s: the stage that is running, and the busy Ray worker processes under each node's
    raylet, by process title -> seen[stage][node id] = titles."""

    def __init__(self, nodes: dict, run: Path):
        super().__init__(daemon=True)
        self.nodes, self.run_dir, self.seen, self.stop = nodes, run, {}, threading.Event()
        self.errors: list[str] = []

    def run(self):
        while not self.stop.is_set():
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - a sampling hiccup must not end the sampling
                self.errors.append(repr(e))
            time.sleep(0.2)

    def sample(self):
        import psutil

        stage = running_stage(self.run_dir)
        for nid, node in list(self.nodes.items()) if stage else []:
            try:
                children = psutil.Process(raylet_pid(node)).children()
            except (psutil.Error, KeyError, IndexError):  # a removed node has no raylet left
                continue
            for child in children:
                try:
                    title = " ".join(child.cmdline())[:80]
                except psutil.Error:
                    continue
                words = title.split("(")[0].split()
                name = words[0] if words else ""
                if name.startswith("ray::") and name != "ray::IDLE" and name not in AGENTS:
                    self.seen.setdefault(stage, {}).setdefault(nid, set()).add(name)


def watch_and_kill(cluster, nodes: dict, run: Path, record: dict, done: threading.Event) -> None:
    """Remove the node hosting Train rank 1 once a step past the first checkpoint is logged; add a
    replacement trainer node."""
    metrics = run / ".staging" / "base" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not done.is_set():
        pid_files = sorted(run.glob(".work/base-*/worker_pids/rank*.pid"))
        steps = []
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    steps.append(json.loads(line).get("step", 0) if "train_loss" in line else 0)
                except json.JSONDecodeError:
                    pass
        if len(pid_files) == 2 and steps and max(steps) >= KILL_AFTER:
            where = {p.stem: node_of_pid(int(p.read_text()), nodes) for p in pid_files}
            victim = where["rank1"]
            record.update(ranks_before=where, killed_node=victim, killed_at_step=max(steps),
                          killed_at=time.time())
            cluster.remove_node(nodes.pop(victim), allow_graceful=False)
            # Node() installs exit/signal hooks, which Python allows only on the main thread (busy in
            # the pipeline); the replacement is stopped by cluster.shutdown() like the others.
            cluster._shutdown_at_exit = False
            new = cluster.add_node(**TRAINER_NODE)
            cluster._shutdown_at_exit = True
            nodes[new.node_id] = new
            record["replacement_node"] = new.node_id
            # After the restart the pid files are rewritten by the new workers: where did they land?
            t0 = time.time()
            while time.time() - t0 < 300 and not done.is_set():
                pids = {p.stem: int(p.read_text()) for p in run.glob(".work/base-*/worker_pids/rank*.pid")}
                after = {r: node_of_pid(pid, nodes) for r, pid in pids.items()}
                if len(after) == 2 and all(after.values()) and after != where:
                    record["ranks_after"] = after
                    break
                time.sleep(0.2)
            return
        time.sleep(0.05)


def main(out: Path) -> int:
    # Our own temp dir: the address file Cluster writes for `ray.init("auto")` stays out of /tmp/ray,
    # so other Ray runs on this machine never join this cluster (and socket paths stay short).
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="lrmn-", dir="/tmp")
    os.environ.pop("RAY_ADDRESS", None)
    # Binds every node (GCS included) to 127.0.0.1 (STACK-NOTES); Cluster adds nodes without the CLI
    # check this switch otherwise imposes on `ray start --address` joins.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"  # see tests/test_pretrain.py: fast polls
    import ray
    import yaml
    from ray.cluster_utils import Cluster

    from llmray.pipeline import parse_pipeline
    from llmray.runner import run_pipeline

    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    record: dict = {"head": cluster.head_node.node_id}
    try:
        workers = [cluster.add_node(**TRAINER_NODE) for _ in range(2)]
        cluster.wait_for_nodes()
        nodes = {n.node_id: n for n in [cluster.head_node, *workers]}
        env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM",
                                          "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S") if k in os.environ}
        ray.init(address=cluster.address, runtime_env={"env_vars": env})
        record["driver_node"] = ray.get_runtime_context().get_node_id()
        record["nodes_at_start"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        record["worker_nodes"] = [w.node_id for w in workers]
        text = PIPELINE.format(workdir=out / "runs", steps=STEPS, every=EVERY)
        (out / "pipeline.yaml").write_text(text)
        pipe = parse_pipeline(yaml.safe_load(text), "multinode.yaml", text)
        run = out / "runs" / "multinode"
        sampler, done = Sampler(nodes, run), threading.Event()
        killer = threading.Thread(target=watch_and_kill, args=(cluster, nodes, run, record, done), daemon=True)
        sampler.start()
        killer.start()
        t0 = time.time()
        try:
            record["states"] = run_pipeline(pipe, echo=lambda m: print(m, flush=True))
        finally:
            done.set()
            sampler.stop.set()
            killer.join(timeout=10)
            sampler.join(timeout=5)
        record["wall_s"] = round(time.time() - t0, 1)
        record["sampler_errors"] = sampler.errors[:20]
        record["seen"] = {st: {nid: sorted(t) for nid, t in by.items()} for st, by in sampler.seen.items()}
        record["nodes_at_end"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    finally:
        (out / "result.json").write_text(json.dumps(record, indent=2, default=str))
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
