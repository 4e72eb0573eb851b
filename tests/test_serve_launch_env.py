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
