"""Connecting to Ray: join a cluster when one is named, else start a local Ray on loopback."""

from __future__ import annotations

import os


def init_ray(cfg=None) -> None:
    """Idempotent ray.init. Joins `cfg.address` or $RAY_ADDRESS; otherwise starts a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = (cfg.address if cfg else None) or os.environ.get("RAY_ADDRESS")
    # Workers must find the llmray package and see the same environment switches.
    env_vars = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "VLLM_CPU_KVCACHE_SPACE", "TOKENIZERS_PARALLELISM")
                if k in os.environ}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    host = cfg.host if cfg else "127.0.0.1"
    if host in ("127.0.0.1", "localhost"):
        _loopback_only()
    kwargs = {"include_dashboard": False, "runtime_env": runtime_env}
    if cfg and cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    if cfg and cfg.object_store_mb:
        kwargs["object_store_memory"] = cfg.object_store_mb * 2**20
    ray.init(**kwargs)


def _loopback_only() -> None:
    """Keep a new single-node Ray on 127.0.0.1 (Ray 2.60 binds the machine's interface address).

    Ray reads this switch once, when `ray` is first imported (see STACK-NOTES), and by now this
    process has imported it; so the module constant is set too, and the environment variable
    carries the switch to every process Ray starts."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
