"""What a Serve replica gets, from the serve settings (a ServeConfig dump): its environment, its
resource reservation (the `llmray.resources` family) and a model deployment's Serve options.
Pure functions, no Ray import; `llmray.serve.app` binds the deployments with them.
"""

from __future__ import annotations

import os

from llmray.rayutil import WORKER_ENV
from llmray.resources import ReplicaResources


def replica_env(settings: dict, engine: str | None = None) -> dict:
    """Environment variables the replicas get (Serve's own switches come from the controller)."""
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    if engine == "vllm":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(settings["vllm"]["kv_cache_gb"]))))
    return env


def replica_resources(settings: dict) -> ReplicaResources:
    """The replica's reservation from the serve settings (a ServeConfig dump)."""
    return ReplicaResources(**{k: settings[k] for k in ReplicaResources.model_fields if k in settings})


def model_options(m: dict, s: dict, engine: str) -> dict:
    """Ray Serve options of a model deployment (one served stage or name `m`) from the serve settings."""
    env = replica_env(s, engine)
    opts = {
        "name": f"model-{m['stage']}",
        "ray_actor_options": {**replica_resources(s).ray_options(), "runtime_env": {"env_vars": env}},
        "max_ongoing_requests": s["max_ongoing_requests"], "max_queued_requests": s["max_queued_requests"],
        # vLLM on CPU takes tens of seconds to start; the default health check would be too eager.
        "health_check_timeout_s": 60, "graceful_shutdown_timeout_s": 10,
    }
    if s.get("autoscaling"):
        opts["autoscaling_config"] = dict(s["autoscaling"])
    else:
        opts["num_replicas"] = s["replicas"]
    return opts
