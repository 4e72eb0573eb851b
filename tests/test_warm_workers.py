"""Warm workers: an RL role actor on a local Ray that llmray started takes one of Ray's prestarted idle
worker processes (no per-actor runtime env) and still sees the switches it needs; an actor that does
need a runtime env var (PYTHONPATH, read at process start) gets a fresh process. The split itself is a
unit test without Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmray import rayutil
from llmray.rlhf import actors

# Runs in a fresh process: the Ray must be a fresh one llmray starts itself, with its idle workers still
# prestarted (the session's `ray_local` Ray has handed its own to earlier tests, and is left alone).
PROBE = r"""
import os, time
import psutil, ray
from llmray.rayutil import init_ray
from llmray.rlhf.actors import RayActorGroup
from llmray.resources import ActorResources

class Role:
    def __init__(self):
        self.pid = os.getpid()
    def ping(self):
        return True
    def info(self):
        return self.pid, {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "TOKENIZERS_PARALLELISM",
                                                         "HF_HUB_OFFLINE", "PYTHONPATH")}

init_ray()
raylet = psutil.Process(ray._private.worker._global_node.all_processes["raylet"][0].process.pid)
deadline, idle = time.time() + 60, set()
while time.time() < deadline and len(idle) < 2:  # Ray prestarts one idle worker per CPU (2 here)
    idle = {p.pid for p in raylet.children() if "ray::IDLE" in " ".join(p.cmdline())}  # Ray's process title
    time.sleep(0.2)
res = ActorResources(num_cpus=0.1)
warm = RayActorGroup("warm", Role, res, name_prefix="llmray-test", ready_timeout_s=60)
fresh = RayActorGroup("fresh", Role, res, env={"PYTHONPATH": "/nonexistent"}, name_prefix="llmray-test",
                      ready_timeout_s=60)
for tag, g in (("WARM", warm), ("FRESH", fresh)):
    pid, env = g.run("info")[0]
    print(tag, pid in idle, env, flush=True)
print("IDLE", sorted(idle))
ray.shutdown()
"""


def test_split_env_keeps_what_workers_inherit(monkeypatch):
    env = {"HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": "/x"}
    monkeypatch.setattr(rayutil, "_inherited", None)  # a cluster we joined: everything through runtime_env
    assert actors.split_env(env) == (env, {})
    monkeypatch.setattr(rayutil, "_inherited", {"HF_HUB_OFFLINE": "1", "PYTHONPATH": "/y"})
    # inherited with the same value: nothing; late-read: set in the actor; the rest: runtime env
    assert actors.split_env(env) == ({"PYTHONPATH": "/x"}, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    cls = actors._with_env(dict, {"A_LATE_VAR": "1"})
    monkeypatch.delenv("A_LATE_VAR", raising=False)
    assert cls.__name__ == "dict" and cls(a=1) == {"a": 1} and os.environ["A_LATE_VAR"] == "1"
    assert actors._with_env(dict, {}) is dict


@pytest.mark.integration  # starts a Ray of its own
def test_role_actor_starts_on_a_prestarted_worker():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                                             "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, env=env,
                          check=False)
    out = proc.stdout + proc.stderr[-3000:]
    # the role without runtime-env needs ran in a prestarted worker, with the late switch set in-process
    assert ("WARM True {'VLLM_ENABLE_V1_MULTIPROCESSING': '0', 'TOKENIZERS_PARALLELISM': 'false', "
            "'HF_HUB_OFFLINE': '1', 'PYTHONPATH': None}") in proc.stdout, out
    # a var needed at process start still goes through the runtime env: a fresh process
    assert "FRESH False {'VLLM_ENABLE_V1_MULTIPROCESSING': '0'" in proc.stdout, out
    assert "'PYTHONPATH': '/nonexistent'" in proc.stdout, out
