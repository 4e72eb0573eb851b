"""Token shards in, micro-batches out: Ray Data on the driver, resumable streams on the workers.

Driver: `read_rows(path)` opens a folder of parquet shards (the tokenize stage's `train/`,
`val/`; rows of fixed-length `input_ids`) as a lazy Ray Dataset. `fit` hands the datasets to
TorchTrainer: "train" datasets are split across workers (streaming_split with preserve_order,
so the rows each worker sees, and their order, are the same on every run); "val*" datasets are
not split and are read once per worker (a small cached prefix, see `take_batches`).

Worker: `BatchStream` cycles one shard epoch after epoch and counts micro-batches; its
`state_dict()` (epoch, index) goes into every checkpoint and `load_state_dict` skips the
consumed micro-batches on resume, so a resumed run sees exactly the batches it would have
seen. `MixedStream` interleaves two streams at a fixed fraction on a deterministic schedule
(replay of general data during domain fine-tuning). `token_collate` turns a numpy batch into
torch tensors. No Ray import at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path


def read_rows(path: Path | str, columns: list[str] | None = None, num_cpus: float = 0.0, min_rows: int = 0):
    """A folder of parquet shards -> a lazy Ray Dataset, one block per file, in file-name order.

    `min_rows`: repeat the file list until the dataset holds at least this many rows, so a run of
    several epochs is ONE pass for Ray Data: each new pass of a split dataset waits for every
    worker and restarts execution (about a second), which on small data was ~9% of the run.
    Built as from_items(paths) -> map_batches(read): unlike `ray.data.read_parquet`, every task
    of this plan honours `num_cpus`, so with 0 the reads run beside Train workers that hold all
    CPUs (read_parquet's file-listing task always asks for a whole CPU and waits forever)."""
    import math

    import pyarrow.parquet as pq
    import ray.data

    files = sorted(str(p) for p in Path(path).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet shards in {path}")
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)  # footers only
    repeat = max(1, math.ceil(min_rows / rows)) if rows else 1
    items = [{"path": f} for _ in range(repeat) for f in files]
    paths = ray.data.from_items(items, override_num_blocks=len(items))
    ds = paths.map_batches(_read_parquet_files, fn_kwargs={"columns": columns}, batch_size=1,
                           batch_format="pyarrow", num_cpus=num_cpus)
    ds.context.enable_progress_bars = False  # one bar per worker per epoch would flood the stage log
    return ds


def rows_needed(train_cfg, num_workers: int) -> int:
    """Training rows a run consumes (every worker, every micro-batch), plus one spare batch each."""
    per_step = train_cfg.grad_accum * train_cfg.micro_batch_size * num_workers
    return (train_cfg.steps + 1) * per_step


def _read_parquet_files(batch, columns: list[str] | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p, columns=columns) for p in batch.column("path").to_pylist()])


def token_collate(batch: dict) -> dict:
    """numpy batch with `input_ids` (rows of equal length, any int dtype) -> {"input_ids": LongTensor}."""
    import numpy as np
    import torch

    ids = batch["input_ids"]
    if ids.dtype == object:  # Arrow list column -> array of arrays
        ids = np.stack(ids)
    return {"input_ids": torch.from_numpy(ids.astype(np.int64))}


def shard_epochs(shard, batch_size: int, drop_last: bool = True) -> Callable[[], Iterator[dict]]:
    """A Ray DataIterator (dataset shard) -> a function returning one epoch of numpy micro-batches.
    Training drops a short last batch (every step the same size); held-out sets keep it, so a set
    smaller than one micro-batch is still evaluated."""

    def epoch():
        return iter(shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
                                       prefetch_batches=2))

    return epoch


class BatchStream:
    """Endless micro-batches from `epoch_fn()` (one epoch per call), with a resumable position."""

    def __init__(self, epoch_fn: Callable[[], Iterator], collate: Callable = token_collate):
        self.epoch_fn = epoch_fn
        self.collate = collate
        self.epoch = 0
        self.index = 0  # micro-batches consumed in the current epoch
        self._it: Iterator | None = None

    def _start_epoch(self, skip: int) -> None:
        self._it = self.epoch_fn()
        for _ in range(skip):  # resume: replay the consumed part of the epoch without using it
            next(self._it)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._start_epoch(self.index)
        try:
            raw = next(self._it)
        except StopIteration:
            if self.index == 0:
                raise RuntimeError("the training data yields no full micro-batch: too few rows for "
                                   "micro_batch_size x workers") from None
            self.epoch, self.index = self.epoch + 1, 0
            self._start_epoch(0)
            raw = next(self._it)
        self.index += 1
        return self.collate(raw)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self._it = int(state["epoch"]), int(state["index"]), None


class MixedStream:
    """Interleave `main` and `extra` so that exactly `fraction` of micro-batches come from `extra`.

    Micro-batch i comes from `extra` when floor((i+1) * f) > floor(i * f): deterministic, evenly
    spread, and resumable from the counter alone."""

    def __init__(self, main: BatchStream, extra: BatchStream, fraction: float):
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        self.main, self.extra, self.fraction = main, extra, fraction
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        i, f = self.count, self.fraction
        self.count += 1
        use_extra = int((i + 1) * f) > int(i * f)
        return next(self.extra if use_extra else self.main)

    def state_dict(self) -> dict:
        return {"count": self.count, "main": self.main.state_dict(), "extra": self.extra.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.main.load_state_dict(state["main"])
        self.extra.load_state_dict(state["extra"])


def take_batches(epoch_fn: Callable[[], Iterator], n: int, collate: Callable = token_collate) -> list[dict]:
    """The first `n` micro-batches of one epoch (fewer if the data is short), collated."""
    out = []
    for raw in epoch_fn():
        if len(out) >= n:
            break
        out.append(collate(raw))
    return out
