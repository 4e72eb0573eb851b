"""The generic Ray Train loop every training kind runs: `fit(task, train_cfg, resources, ctx)`.

Driver (`fit`): task.datasets() -> TorchTrainer(scaling from `resources`, "train*" datasets
split across workers in a fixed order, "val*" datasets given whole to each worker) with
storage under `ctx.work_dir/ray_train`, or on the object store when the run directory is a URI
(`ctx.work_remote`: RunConfig(storage_path=<path on the store>, storage_filesystem=<pyarrow fs>)).
Ray Train reloads its checkpoint list from that storage when a run of the same name starts, so a
rerun of the same stage fingerprint, on this machine or another, resumes from the latest
checkpoint. FailureConfig(max_failures) (a dead worker restarts the group from
the latest checkpoint), and a small metrics actor on the driver node that appends the
records rank 0 sends to `ctx.out_dir/metrics.jsonl`. After training, the final checkpoint's
`model/` (the HF export) is copied to `ctx.out_dir/model`.

In the driver's process (`resources.in_process`, auto for one CPU worker on a local Ray this process
started): the same TorchTrainer with ScalingConfig(num_workers=0), Ray Train v2's local mode, runs
`_worker` here, with the same data iterators a one-worker group gets (DataConfig.configure), so no
controller or worker process starts. Local mode keeps no checkpoint on storage, so the worker persists
its own (`ckpt.CheckpointStore`, same storage folder, `keep_checkpoints`) and restores the latest; an
exception is retried from it up to `max_failures` times; metrics go straight to the file. The driver's
torch thread count is restored afterwards and the model and optimizer are freed.

Worker (`_worker`), top to bottom: seed -> build model (task) -> activation checkpointing /
compile -> DDP or FSDP2 wrap -> AdamW + warmup/cosine -> data streams -> restore the latest
checkpoint if any (model, optimizer, scheduler, data position, RNG) -> evaluate (step 0) ->
loop of `train_step` (the Ray-free per-step function) with a record every `log_every` steps,
evaluation every `eval_every`, a checkpoint every `checkpoint_every` -> final evaluation ->
rank 0 exports the HF model into the final checkpoint.

Fixed cost: rank 0 times its phases (set-up, evaluations, checkpoints, export, the steps) and sends
them with its final record under "timing"; `fit` takes them out of the metrics and, with the
driver's own clock (worker-group start, the model copy), fills the stage's `FixedCost` when given
one: startup = fit() called -> first step, less the evaluation before it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llmray.resources import in_process, scaling_config
from llmray.stages.base import FixedCost
from llmray.train import checkpoint as ckpt
from llmray.train.data import data_config, shard_epochs, take_batches
from llmray.train.flops import flops_per_token, mfu, peak_flops
from llmray.train.optim import build_optimizer, build_scheduler
from llmray.train.step import train_step
from llmray.train.task import all_reduce_sum


@dataclass
class FitResult:
    metrics: dict  # rank 0's final record: first/final evaluation, throughput, steps
    model_dir: Path  # ctx.out_dir / "model"
    metrics_path: Path  # ctx.out_dir / "metrics.jsonl"
    checkpoint_dir: Path  # the final checkpoint on storage (train_state.pt, meta.json, model/); a path on
    # the store (no scheme) when the run directory is a URI
    work_s: float | None = None  # seconds rank 0 spent in training steps this attempt (None: not measured)


# ------------------------------------------------------------------------------- driver side


class MetricsFile:
    """Appends JSON records to a file on the driver's node (run as a zero-CPU Ray actor)."""

    def __init__(self, path: str):
        from llmray.stages.base import MetricsWriter

        self.writer = MetricsWriter(Path(path))

    def write(self, record: dict) -> None:
        self.writer.write(record)


def _metrics_actor(path: Path):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0)(MetricsFile).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(str(path))


@contextlib.contextmanager
def _train_env():
    """Ray Train v2 settings for one fit, through the driver's environment (Ray Train hands these variables
    to its controller and workers; a value the user set wins; restored after): poll the workers every
    0.5 s instead of 2 s, since the start and the end of every stage wait for a poll, and on a one-node
    cluster start no preemption-watcher actor (a process; there is no other node to move to)."""
    import ray

    wanted = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    if sum(1 for n in ray.nodes() if n.get("Alive")) == 1:
        wanted["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def fit(task, train_cfg, resources, ctx, name: str = "train", cost=None) -> FitResult:
    """Train `task` on Ray Train (a worker group, or this process: module docstring); returns the final
    metrics and where the HF model landed.

    `cost` (a `llmray.stages.base.FixedCost`) gets the phases outside the steps: startup, eval,
    checkpoint, export; FitResult.work_s is the steps' own time."""
    t_fit = time.time()  # wall clock: compared with the worker's, on the same node in the common case
    datasets = task.datasets()
    if "train" not in datasets:
        raise ValueError(f"task.datasets() must include 'train'; got {sorted(datasets)}")
    metrics_path = Path(ctx.out_dir) / "metrics.jsonl"
    config = {"task": task, "cfg": train_cfg, "strategy": resources.strategy, "datasets": sorted(datasets),
              "pid_dir": str(Path(ctx.work_dir) / "worker_pids"), "threads": max(1, int(resources.cpus_per_worker))}
    local = in_process(resources)
    run = _fit_in_process if local else _fit_worker_group
    result = run(config, datasets, resources, train_cfg, name, _storage(ctx), metrics_path, getattr(ctx, "log", None))
    t_done = time.time()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a final checkpoint")
    model_dir = Path(ctx.out_dir) / "model"
    t_copy = time.perf_counter()
    with result.checkpoint.as_directory() as d:
        shutil.copytree(Path(d) / "model", model_dir, dirs_exist_ok=True)
    metrics = dict(result.metrics)
    timing = metrics.pop("timing", None) or {}
    if timing.get("at_end") and hasattr(ctx, "log"):  # the Ray Train teardown: part of the stage's other_s
        ctx.log.info("ray train%s: fit -> train function %.1fs, worker set-up %.1fs (model, data streams), "
                     "final report -> fit returned %.1fs", " (in-process)" if local else "",
                     timing["at_start"] - t_fit, timing.get("setup_s", 0.0), t_done - timing["at_end"])
    if cost is not None:
        cost.add("export", time.perf_counter() - t_copy)
        add_timing(cost, timing, t_fit)
    return FitResult(metrics=metrics, model_dir=model_dir, metrics_path=metrics_path,
                     checkpoint_dir=Path(result.checkpoint.path), work_s=timing.get("work_s"))


def _fit_worker_group(config, datasets, resources, train_cfg, name, storage, metrics_path, log):
    """TorchTrainer.fit() with a worker group (a controller actor and one process per worker)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    sink = _metrics_actor(metrics_path)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={**config, "sink": sink},
        scaling_config=scaling_config(resources),
        datasets=datasets,
        dataset_config=data_config(datasets, resources.num_workers),
        run_config=RunConfig(name=name, storage_path=storage[0], storage_filesystem=storage[1],
                             failure_config=FailureConfig(max_failures=resources.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=train_cfg.keep_checkpoints)),
    )
    try:
        with _train_env():
            return trainer.fit()
    finally:
        ray.kill(sink)


def _fit_in_process(config, datasets, resources, train_cfg, name, storage, metrics_path, log):
    """TorchTrainer.fit() in Ray Train's local mode (`_worker` runs here), retried after an exception from
    the latest persisted checkpoint up to `max_failures` times, as FailureConfig does for a worker group."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # The same iterators (same rows, same order) a one-worker group's worker gets from Ray Train.
    shards = data_config(datasets, 1).configure(datasets, world_size=1, worker_handles=None,
                                                 worker_node_ids=None)[0]
    store = ckpt.CheckpointStore(f"{storage[0]}/{name}", storage[1], keep=train_cfg.keep_checkpoints)
    sink = MetricsFile(str(metrics_path))
    for attempt in range(resources.max_failures + 1):
        # Each attempt trains a copy of the task, as each worker (re)start unpickles its own: state a task
        # builds while training (dpo's reference model and caches) starts fresh and is freed with the copy.
        attempt_config = {**config, "task": ray.cloudpickle.loads(ray.cloudpickle.dumps(config["task"])),
                          "sink": sink, "store": store}
        trainer = TorchTrainer(_worker, train_loop_config=attempt_config,
                               scaling_config=ScalingConfig(num_workers=0), datasets=shards,
                               run_config=RunConfig(name=name))
        try:
            with _driver_state():
                return trainer.fit()
        except Exception as e:  # noqa: BLE001 - what a worker group's FailureConfig retries, too
            if attempt == resources.max_failures:
                raise
            if log is not None:  # str(e): a record holding the exception would keep its frames' model alive
                log.warning("training failed in-process (%s: %s); restart %d of %d from the latest checkpoint",
                            type(e).__name__, str(e), attempt + 1, resources.max_failures)
        finally:
            _leave_local_mode()
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _driver_state():
    """The worker sets its torch thread count; in the driver's process, put the driver's back after. Ray
    Train's local mode logs every report at INFO (the whole final record): kept to warnings meanwhile."""
    import logging

    import torch

    threads, reports = torch.get_num_threads(), logging.getLogger("ray.train.v2._internal.execution.train_fn_utils")
    level = reports.level
    reports.setLevel(logging.WARNING)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        reports.setLevel(level)


def _leave_local_mode() -> None:
    """After an in-process fit: this process is no Train worker any more (Ray Train's local mode leaves its
    context installed, and `llmray.device.compute_init` would take the driver for one), and the model,
    optimizer and data streams of the run are freed now rather than at some later collection."""
    from ray.train.v2._internal.execution.train_fn_utils import set_train_fn_utils

    set_train_fn_utils(None)
    gc.collect()


def add_timing(cost, timing: dict, t_fit: float) -> None:
    """Rank 0's phase timers into the stage's FixedCost (every phase key present, 0 when none).
    Startup runs from `fit` (driver, wall clock) to the first step, less the evaluation and checkpoint
    restore before it; when the run was already finished (a restored final record) it stays 0."""
    before = timing.get("eval_before_s", 0.0) + timing.get("restore_s", 0.0)
    start = timing.get("at_first_step")
    cost.add("startup", 0.0 if start is None else max(0.0, start - t_fit - before))
    cost.add("eval", timing.get("eval_s", 0.0))
    cost.add("checkpoint", timing.get("checkpoint_s", 0.0) + timing.get("restore_s", 0.0))
    cost.add("export", timing.get("export_s", 0.0))


def _storage(ctx) -> tuple[str, object]:
    """(storage_path, storage_filesystem) for RunConfig: the store's work folder, or the local one."""
    remote = getattr(ctx, "work_remote", None)
    if remote is not None:
        return remote.join("ray_train"), remote.fs
    return str(Path(ctx.work_dir) / "ray_train"), None


# ------------------------------------------------------------------------------- worker side


def seed_all(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_model(model, cfg, compute, strategy: str, world: int):
    """Activation checkpointing, compile, device placement and the data-parallel wrap."""

    if cfg.activation_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(compute.device)
    model.train()
    if cfg.compile:
        model.compile()  # in place, before wrapping: state-dict keys stay those of the HF model
    if strategy == "fsdp2":
        model = _fully_shard(model, compute)
    elif world > 1:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # No buffer sync before each forward: Llama's only buffers (rotary tables) are identical on every
        # rank. torch >= 2.13 names it forward_sync_buffers (broadcast_buffers is deprecated there).
        ids = [compute.device.index] if compute.is_cuda else None
        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        model = DistributedDataParallel(model, device_ids=ids,
                                        **{"forward_sync_buffers" if new_name else "broadcast_buffers": False})
    return model


def _fully_shard(model, compute):
    """FSDP2: shard each transformer block (HF `_no_split_modules`), then the root."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=compute.dtype or torch.float32, reduce_dtype=torch.float32)
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def export_model(model, task, folder: Path, rank: int) -> None:
    """Every rank calls (gathers under FSDP2); rank 0 writes the HF folder via `task.save`."""
    import torch

    state = ckpt.full_model_state(model) if _is_fsdp(model) else None
    if rank != 0:
        return
    plain = ckpt.unwrap(model)
    if state is not None:  # rebuild an unsharded copy on CPU for saving
        with torch.device("meta"):
            plain = type(plain)(plain.config)
        plain.load_state_dict(state, assign=True)
        plain.tie_weights()
    task.save(plain, folder)


def _is_fsdp(model) -> bool:
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


class _Meter:
    """Accumulates per-step stats between log records; all-reduces means across ranks."""

    def __init__(self, compute, flops_token_fn, world: int):
        self.compute, self.flops_token_fn, self.world = compute, flops_token_fn, world
        self.peak = peak_flops(compute.device)
        self.total_tokens, self.total_time, self.total_flops = 0, 0.0, 0.0
        self.reset()

    def reset(self):
        self.sums, self.n, self.tokens, self.data_s, self.t0 = {}, 0, 0, 0.0, time.perf_counter()

    def add(self, stats: dict) -> None:
        for k, v in stats.items():
            if k not in ("tokens", "lr"):
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.tokens += stats["tokens"]
        self.lr = stats["lr"]
        self.n += 1

    def pause(self):
        """Exclude evaluation/checkpoint time from throughput."""
        return _Paused(self)

    def record(self, seq_len: int) -> dict:
        import torch

        names = sorted(self.sums)
        vec = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float64, device=self.compute.device)
                           for k in names])
        vec = all_reduce_sum(vec) / (self.world * self.n)
        elapsed = time.perf_counter() - self.t0
        tps = self.tokens * self.world / elapsed
        out = {("train_" + k if k == "loss" else k): float(v) for k, v in zip(names, vec.tolist())}
        # data_wait: share of the interval spent waiting for input batches (a data-loading stall)
        out.update(lr=self.lr, tokens_per_s=tps, step_time_s=elapsed / self.n, data_wait=self.data_s / elapsed)
        m = mfu(tps, self.flops_token_fn(seq_len), self.world, self.peak)
        if m is not None:
            out["mfu"] = m
        self.total_tokens += self.tokens * self.world
        self.total_time += elapsed
        self.total_flops += self.tokens * self.world * self.flops_token_fn(seq_len)
        self.reset()
        return out

    def summary(self) -> dict:
        """Throughput over every logged interval of this attempt (evaluation/checkpoints excluded)."""
        if not self.total_time:
            return {}
        out = {"tokens_per_s": self.total_tokens / self.total_time}
        if self.peak:
            out["mfu"] = self.total_flops / self.total_time / (self.world * self.peak)
        return out


class _Paused:
    def __init__(self, meter):
        self.meter = meter

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.meter.t0 += time.perf_counter() - self.start
        return False


def _write_pid(pid_dir: str, rank: int) -> None:
    """Record this worker's pid (for operators and the fault-tolerance test); best effort."""
    try:
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))
    except OSError:
        pass


def _build_streams(task, cfg, names: list[str]):
    """Train stream over the split "train*" shards; the first eval batches of every "val*" set."""
    import ray.train

    epochs = {n: shard_epochs(ray.train.get_dataset_shard(n), cfg.micro_batch_size, drop_last=n.startswith("train"))
              for n in names}
    stream = task.train_stream({n: e for n, e in epochs.items() if n.startswith("train")})
    val = {n: take_batches(e, cfg.eval_batches, task.collate) for n, e in epochs.items() if n.startswith("val")}
    return stream, val


class _Clock(FixedCost):
    """Rank 0's phase timers for the stage's fixed cost: FixedCost's per-phase seconds (every key present),
    plus the wall-clock marks of the worker's start and first step. Nothing here changes what is computed."""

    KEYS = ("eval_s", "checkpoint_s", "export_s", "work_s", "restore_s", "eval_before_s", "setup_s")

    def __init__(self):
        super().__init__()
        self.parts = dict.fromkeys(self.KEYS, 0.0)
        self.at_first_step, self.at_start = None, time.time()

    def first_step(self) -> None:
        if self.at_first_step is None:
            self.at_first_step = time.time()

    def as_dict(self) -> dict:
        return {**{k: round(v, 4) for k, v in self.parts.items()}, "at_first_step": self.at_first_step,
                "at_start": self.at_start}


class _Log:
    """Rank 0 sends records to the driver's metrics actor; other ranks send nothing."""

    def __init__(self, sink, rank: int):
        self.sink, self.rank, self.pending = sink, rank, []

    def write(self, record: dict) -> None:
        if self.rank == 0 and isinstance(self.sink, MetricsFile):  # in-process: the file itself
            self.sink.write(record)
        elif self.rank == 0:
            self.pending.append(self.sink.write.remote(record))

    def flush(self) -> None:
        import ray

        ray.get(self.pending)
        self.pending = []


def _restore(model, optimizer, scheduler, stream, rank: int, store) -> dict:
    """Load the latest checkpoint if there is one (Ray Train's, or the store's in-process); returns its meta
    ({} when fresh)."""
    import ray.train

    with contextlib.ExitStack() as stack:
        if store is not None:
            folder = stack.enter_context(store.latest())
        else:
            checkpoint = ray.train.get_checkpoint()
            folder = None if checkpoint is None else stack.enter_context(checkpoint.as_directory())
        if folder is None:
            return {}
        meta = ckpt.load(folder, model, optimizer, scheduler, rank)
    stream.load_state_dict(meta["data"])
    return meta


def _checkpoint(folder: str, step: int, store):
    """The Ray Checkpoint to report for a folder `ckpt.save` wrote: the folder itself (Ray Train copies it to
    storage), or in-process the store's copy on storage (Ray Train's local mode only keeps the object)."""
    from ray.train import Checkpoint

    if store is None:
        return Checkpoint.from_directory(folder)
    return Checkpoint(store.persist(Path(folder), step), store.fs)


def _report_checkpoint(model, optimizer, scheduler, meta: dict, rank: int, store) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        ckpt.save(Path(d), model, optimizer, scheduler, meta, rank)
        ray.train.report({"step": meta["step"]}, checkpoint=_checkpoint(d, meta["step"], store))


def _report_final(model, optimizer, scheduler, task, meta: dict, rank: int, clock: _Clock, store) -> None:
    """The last checkpoint: full training state (resumable, marked done) plus the HF export in model/.
    The final record carries rank 0's phase timers under "timing" (not saved in meta.json)."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        with clock.phase("checkpoint_s"):
            ckpt.save(Path(d), model, optimizer, scheduler, {**meta, "done": True}, rank)
        with clock.phase("export_s"):
            export_model(model, task, Path(d) / "model", rank)
        with clock.phase("checkpoint_s"):
            checkpoint = _checkpoint(d, meta["step"], store)
        ray.train.report({**meta["final_metrics"], "timing": {**clock.as_dict(), "at_end": time.time()}},
                         checkpoint=checkpoint)


def _worker(config: dict) -> None:
    import ray.train
    import torch

    from llmray.device import compute_init

    task, cfg, clock, store = config["task"], config["cfg"], _Clock(), config.get("store")
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    if store is None:  # in-process this is the driver: no worker process to record
        _write_pid(config["pid_dir"], rank)
    torch.set_num_threads(config["threads"])  # the worker's CPUs (Ray sets OMP_NUM_THREADS the same way)
    with clock.phase("setup_s"):
        compute = compute_init()
        seed_all(cfg.seed)  # the same initial weights on every rank
        model = prepare_model(task.build_model(), cfg, compute, config["strategy"], world)
        optimizer, log = build_optimizer(model, cfg), _Log(config["sink"], rank)
        scheduler = build_scheduler(optimizer, cfg)
        stream, val = _build_streams(task, cfg, config["datasets"])
    seed_all(cfg.seed + 1 + rank)  # per-rank randomness in training (dropout etc.)
    with clock.phase("restore_s"):
        meta = _restore(model, optimizer, scheduler, stream, rank, store)
    step, first_eval = meta.get("step", 0), meta.get("first_eval")
    if meta:
        log.write({"event": "resumed", "step": step})
    if first_eval is None:
        with clock.phase("eval_s"), clock.phase("eval_before_s"):
            first_eval = task.evaluate(model, val, compute, rank, world)
        log.write({"step": 0, **first_eval})
    last = _train(task, cfg, model, optimizer, scheduler, stream, val, compute, rank, world, log, clock, step,
                  first_eval, store)
    step = last.pop("_step")
    final = meta.get("final_metrics") or {  # restored after the end: the run's own final figures
        "steps": step, **{k: v for k, v in last.items() if k not in ("step", "_summary")}, **last["_summary"],
        "workers": world, "torch_threads": _torch_threads(), "first_eval": first_eval,
        "final_eval": {k: v for k, v in last.items() if k in first_eval}}
    log.flush()
    _report_final(model, optimizer, scheduler, task, {"step": step, "data": stream.state_dict(),
                                                      "first_eval": first_eval, "final_metrics": final}, rank, clock,
                  store)


def _train(task, cfg, model, optimizer, scheduler, stream, val, compute, rank, world, log, clock, step,
           first_eval, store) -> dict:
    """The step loop from `step` to cfg.steps; returns the last record's values merged, "_step" (the
    step reached) and "_summary" (throughput over the attempt)."""
    flops = {}
    meter, last = _Meter(compute, lambda s: flops.setdefault(s, flops_per_token(ckpt.unwrap(model), s)),
                         world), {}
    while step < cfg.steps:
        clock.first_step()
        t_step = time.perf_counter()
        t_data = time.perf_counter()
        micro = [next(stream) for _ in range(cfg.grad_accum)]
        meter.data_s += time.perf_counter() - t_data
        meter.add(train_step(model, micro, optimizer, scheduler, task.loss, compute, cfg.grad_clip,
                             cfg.attention))
        step += 1
        record = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, **meter.record(_seq_len(micro[0]))}
        clock.add("work_s", time.perf_counter() - t_step)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with meter.pause(), clock.phase("eval_s"):
                record = {"step": step, **record, **task.evaluate(model, val, compute, rank, world)}
        if record:
            log.write(record)
            last.update(record)
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            with meter.pause(), clock.phase("checkpoint_s"):
                _report_checkpoint(model, optimizer, scheduler, {"step": step, "data": stream.state_dict(),
                                                                 "first_eval": first_eval}, rank, store)
    return {**last, "_step": step, "_summary": meter.summary()}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _seq_len(batch: dict) -> int:
    ids = batch.get("input_ids")
    return int(ids.shape[-1]) if ids is not None else 0
