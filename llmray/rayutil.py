"""Connecting to Ray: join a cluster when one is named, else start a local Ray on loopback. Also
`read_parquet`, Ray Data's Parquet read without Ray 2.60's per-read footer-actor start-up.

A local Ray's raylet is a child of this process, so its worker processes inherit this process's
environment as it was at `ray.init`: the switches workers need (offline hub, quiet tokenizers) reach
them without a job-level `runtime_env`. That matters for start-up: Ray prestarts idle Python workers
(one per CPU) and hands them only to tasks and actors whose runtime env is the job's, so a job-level
env_vars block (or a per-actor one, see `llmray.rlhf.actors`) makes every actor a fresh process.
`inherited_env()` tells callers what the workers already have; `RAY_preload_python_modules`
(e.g. `torch,transformers`) set before the run makes those prestarted workers import the modules while
the driver works (bench/README.md "Fixed costs": what it buys and costs).
"""

from __future__ import annotations

import os

# The switches workers need from the driver (one list for Ray workers, RL actors and Serve replicas);
# a cluster we join gets them as the job's runtime env.
WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM",
              "VLLM_CPU_KVCACHE_SPACE")
_inherited: dict[str, str] | None = None  # this process's environment when it started a local Ray


def init_ray(cfg=None) -> None:
    """Idempotent ray.init. Joins `cfg.address`, $RAY_ADDRESS or a Ray already running on this machine
    (as `ray.init()` does); otherwise starts a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = (cfg.address if cfg else None) or os.environ.get("RAY_ADDRESS") or _running_local_ray()
    if address:
        # Workers on other machines must see the same environment switches.
        env_vars = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None, log_to_driver=True)
        return
    host = cfg.host if cfg else "127.0.0.1"
    if host in ("127.0.0.1", "localhost"):
        _loopback_only()
    # No job-level runtime_env: the workers inherit this environment (module docstring).
    kwargs = {"include_dashboard": False}
    if cfg and cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    if cfg and cfg.object_store_mb:
        kwargs["object_store_memory"] = cfg.object_store_mb * 2**20
    global _inherited
    _inherited = dict(os.environ)
    ray.init(**kwargs)


def _running_local_ray() -> str | None:
    """The address of a Ray already running on this machine, which `ray.init()` would join (as it always
    did here); its workers do not inherit this process's environment, so it is treated as a cluster."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - Ray's own lookup failing means nothing to join
        return None


def inherited_env() -> dict[str, str] | None:
    """The environment every worker of the local Ray this process started inherits; None when this
    process joined a cluster (or did not start Ray): then nothing is known to be inherited."""
    return _inherited


def started_here() -> bool:
    """Whether the Ray this process is connected to is a one-node Ray it started itself (`ray.init()` without
    an address: the head node's processes are this process's children, on this machine), not a cluster
    it joined. Training may then run in this process (llmray.resources.in_process)."""
    import ray

    if not ray.is_initialized():
        return False
    from ray._private import worker

    node = getattr(worker, "_global_node", None)  # Ray's own record of how this driver connected
    return bool(getattr(node, "head", False)) and sum(1 for n in ray.nodes() if n.get("Alive")) == 1


def local_cpu_ray() -> bool:
    """`started_here()` on a Ray without GPUs: where a role may run in the driver's process instead of a
    Ray actor or worker group (`resources.in_process` of the training and RL kinds)."""
    import ray

    return started_here() and not ray.cluster_resources().get("GPU")


def _loopback_only() -> None:
    """Keep a new single-node Ray on 127.0.0.1 (Ray 2.60 binds the machine's interface address).

    Ray reads this switch once, when `ray` is first imported (see STACK-NOTES), and by now this
    process has imported it; so the module constant is set too, and the environment variable
    carries the switch to every process Ray starts."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def read_parquet(path, **kwargs):
    """`ray.data.read_parquet(path, **kwargs)` through Ray Data's V1 Parquet datasource, unless
    RAY_DATA_USE_DATASOURCE_V2 is set (then Ray's choice, as the user asked). Ray 2.60's default V2 reader lists
    the files in a task that starts a pool of footer-reader actors for every read: 1.8-6.3 s before the first
    row on 2 cores, whatever the size, against 0.3-1.1 s for V1, with the same rows in the same order
    (bench/README.md "Ray Data's Parquet reader"). The flag is read when the plan is built, so it is
    set around this call only and the rest of the process keeps Ray's default; so is the progress-bar
    switch, since V1 samples the files' footers here, behind a "Parquet dataset sampling" bar on stderr."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.use_datasource_v2, ctx.enable_progress_bars
    if "RAY_DATA_USE_DATASOURCE_V2" not in os.environ:
        ctx.use_datasource_v2 = False
    ctx.enable_progress_bars = False
    try:
        return ray.data.read_parquet(str(path), **kwargs)
    finally:
        ctx.use_datasource_v2, ctx.enable_progress_bars = saved
