"""What a Serve replica gets, from the serve settings (a ServeConfig dump): its environment, its
resource reservation (the `llmray.resources` family) and the Serve options of a model deployment and
of the ingress. With one model and no served names (`single_deployment`) the ingress holds the model
itself, so it takes the model's reservation, replicas and health check as well.
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


def single_deployment(spec: dict) -> bool:
    """One model and no served names: the ingress replica runs the model too (no second actor hop per
    request). Several models or served names keep one deployment each behind the ingress: their replicas
    scale on their own, and the names' version routing (llmray.serve.versions) needs one router."""
    return len(spec["models"]) == 1 and not spec.get("names")


def ingress_options(spec: dict, engine: str) -> dict:
    """Ray Serve options of the ingress deployment (holding the model when `single_deployment`)."""
    s = spec["settings"]
    # Above the in-flight cap, so requests past it reach our code and get a 429 JSON answer.
    ongoing = s["max_concurrent_requests"] + 64
    if not single_deployment(spec):
        return {"name": "openai-ingress", "num_replicas": 1, "max_ongoing_requests": ongoing,
                "ray_actor_options": {"num_cpus": s["ingress_num_cpus"], "runtime_env": {"env_vars": replica_env(s)}}}
    opts = model_options(spec["models"][0], s, engine)
    opts["ray_actor_options"]["num_cpus"] = opts["ray_actor_options"].get("num_cpus", 0) + s["ingress_num_cpus"]
    # The model's max_ongoing/max_queued_requests are applied in the replica (host.InProcess) instead.
    opts.pop("max_queued_requests")
    return opts | {"name": "openai-ingress", "max_ongoing_requests": ongoing}
