"""The environment `llmray serve` gives a Ray it starts itself (llmray.serve.launch.serve_ray_env): what is
set, sized to the machine, never over a user's own value, and gone from this process once Ray is up.
Pure functions; no Ray is started (init_ray is replaced by a recorder of the environment it would see)."""

from __future__ import annotations

import os
import types

import pytest

from llmray.serve import launch
from llmray.serve.launch import serve_ray_env


@pytest.mark.parametrize("cpus, threads", [(1, "1"), (2, "2"), (3, "3"), (64, "4")])
def test_serve_ray_env_is_sized_to_the_node(cpus, threads):
    env = serve_ray_env(cpus, environ={})
    assert env["RAY_worker_niceness"] == "0"  # replicas and engine processes at the foreground priority
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == threads  # min(4, CPUs): Ray's 4 on a small box competes
    # Ray's per-second background work: a slower Serve control loop, no metrics export, no task events.
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"
    assert env["RAY_enable_metrics_collection"] == "0" and env["RAY_task_events_report_interval_ms"] == "0"


def test_serve_ray_env_leaves_a_users_own_values_alone():
    mine = {"RAY_worker_niceness": "10", "RAY_SERVE_HAPROXY_NBTHREAD": "8", "RAY_enable_metrics_collection": "1"}
    env = serve_ray_env(2, environ=mine)
    assert not set(mine) & set(env) and env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.5"


def test_without_a_cpu_count_the_machines_is_used():
    assert serve_ray_env(None, environ={})["RAY_SERVE_HAPROXY_NBTHREAD"] == str(min(4, os.cpu_count() or 1))


def test_the_env_is_set_while_ray_starts_then_restored(monkeypatch):
    import llmray.rayutil

    seen: dict = {}
    monkeypatch.setattr(llmray.rayutil, "init_ray", lambda cfg: seen.update(os.environ))
    monkeypatch.delenv("RAY_SERVE_HAPROXY_NBTHREAD", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "7")  # the user's value wins and survives
    launch._init_ray_for_serving(types.SimpleNamespace(num_cpus=2, address=None))
    assert seen["RAY_SERVE_HAPROXY_NBTHREAD"] == "2" and seen["RAY_worker_niceness"] == "7"
    assert "RAY_SERVE_HAPROXY_NBTHREAD" not in os.environ and os.environ["RAY_worker_niceness"] == "7"


# ------------------------------------------------- Ray's processes off the vLLM model worker's cores

RAY_TREE = [(10, "raylet", {0, 1, 2, 3}), (11, "gcs_server", {0, 1, 2, 3}), (12, "ray::IDLE", {0, 1, 2, 3}),
            (13, "ray::ServeReplica:app:openai-ingress", {0, 1, 2, 3}), (14, "VLLM::EngineCore", {0, 1, 2, 3}),
            (15, "haproxy", {0, 1, 2, 3})]


def test_ray_processes_move_off_the_cores_vllm_bound_its_model_to():
    spare, pids = launch.model_core_plan(RAY_TREE + [(16, "VLLM::Worker", {0, 1, 2})], {0, 1, 2, 3})
    assert spare == {3}  # the core vLLM reserved "for the rest"
    # The raylet (it forks new workers: a restarted replica's vLLM must see the whole machine), idle workers
    # (reused for new actors) and the model worker itself keep their CPUs.
    assert sorted(pids) == [11, 13, 14, 15]


def test_two_model_workers_leave_what_neither_uses():
    spare, pids = launch.model_core_plan(RAY_TREE + [(16, "VLLM::Worker", {0}), (17, "VLLM::Worker_TP1", {1})],
                                         {0, 1, 2, 3})
    assert spare == {2, 3} and 16 not in pids and 17 not in pids


@pytest.mark.parametrize("workers", [
    [],  # the transformers engine: no bound worker
    [(16, "VLLM::Worker", {0, 1, 2, 3})],  # vLLM on GPU (no CPU binding): the worker may run anywhere
    [(16, "VLLM::Worker", {0}), (17, "VLLM::Worker", {1, 2, 3})],  # no core left over
])
def test_nothing_moves_without_a_bound_worker_and_a_core_to_spare(workers):
    assert launch.model_core_plan(RAY_TREE + workers, {0, 1, 2, 3}) == (set(), [])


def test_the_process_tree_lists_descendants_by_their_title():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = dict(launch._proc_tree(os.getpid()))
        assert tree[child.pid].startswith("python")  # the base name of the process title
    finally:
        child.kill()
        child.wait()
