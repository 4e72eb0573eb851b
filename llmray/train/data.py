"""Token shards in, micro-batches out: Ray Data on the driver, resumable streams on the workers.

Driver: `read_rows(path)` opens a folder of parquet shards (the tokenize stage's `train/`,
`val/`; rows of fixed-length `input_ids`) as a lazy Ray Dataset: the file list, repeated to
`min_rows` (with a `shuffle_seed`, every repeat in its own seeded order of files and of rows within
each file), is one stream of rows, and every row carries its position in it (`ROW`). `fit` hands the
datasets to TorchTrainer with `data_config` (below), which asks `rank_shards` for one dataset
per worker: row g of the stream goes to rank g % world (torch's DistributedSampler order; the
stream's own order is the shuffle), so in every step the workers together hold one contiguous window
of the stream: distinct rows whenever the set holds a step's worth, every row of a data epoch on
exactly one worker, the same global batch for any worker count (2 workers x 16 rows = 1 worker x
grad_accum 2 x 16), and the same rows to the same rank in the same order on every run. Each rank
reads the shards itself (a fused read and select; each rank decodes every shard and keeps 1/world of
it) and the `ROW` column is dropped there. "val*" datasets go whole to every worker (a small cached
prefix, see `take_batches`).

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

ROW = "_row"  # a row's position in the repeated file list (read_rows); rank_shards selects on it and drops it
_STREAM = "llmray.rows"  # the DataContext entry read_rows leaves on its dataset: {"rows": stream length, "num_cpus"}


def read_rows(path: Path | str, columns: list[str] | None = None, num_cpus: float = 0.0, min_rows: int = 0,
              shuffle_seed: int | None = None):
    """A folder of parquet shards -> a lazy Ray Dataset, one block per file, in file-name order (or in
    a seeded order, see `shuffle_seed`), each row with its stream position in column `ROW` (drop it
    with `rank_shards(ds, 1)`; `fit` does).

    `min_rows`: repeat the file list until the dataset holds at least this many rows, so a run of
    several epochs is ONE pass for Ray Data: each new pass waits for every worker and restarts
    execution (about a second), which on small data was ~9% of the run.
    `shuffle_seed`: every repeat (data epoch) gets its own seeded order: the files in a random order,
    the rows of each file permuted as it is read (`epoch_order`), positions numbered after that, so
    ranks, resume and reruns see the same rows. Tokenized shards hold the corpus in document order
    (for the built-in corpus: module after module); read that way a model learns one topic at a
    time and forgets the last (the quickstart's base: val loss 5.157 read so, 4.656 shuffled;
    bench/README.md).
    A file's rows are a contiguous stretch of the corpus, so with many files a window of steps
    draws from one file; the permutation within the file is uniform.
    Built as from_items(paths) -> map_batches(read): unlike `ray.data.read_parquet`, every task
    of this plan honours `num_cpus`, so with 0 the reads run beside Train workers that hold all
    CPUs (read_parquet's file-listing task always asks for a whole CPU and waits forever)."""
    import math

    import pyarrow.parquet as pq
    import ray.data

    files = sorted(str(p) for p in Path(path).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet shards in {path}")
    counts = [pq.ParquetFile(f).metadata.num_rows for f in files]  # footers only
    repeat = max(1, math.ceil(min_rows / sum(counts))) if sum(counts) else 1
    items, offset = [], 0
    for epoch in range(repeat):
        for i in epoch_order(len(files), shuffle_seed, epoch):
            items.append({"path": files[i], "offset": offset, "seed": shuffle_seed, "epoch": epoch,
                          "file": int(i)})
            offset += counts[i]
    paths = ray.data.from_items(items, override_num_blocks=len(items))
    ds = paths.map_batches(_read_parquet_files, fn_kwargs={"columns": columns}, batch_size=1,
                           batch_format="pyarrow", num_cpus=num_cpus)
    ds.context.enable_progress_bars = False  # one bar per worker per epoch would flood the stage log
    ds.context.set_config(_STREAM, {"rows": offset, "num_cpus": num_cpus})
    return ds


def rank_shards(ds, world: int) -> list | None:
    """A `read_rows` dataset -> `world` datasets, rank r's holding the stream's rows g with g % world == r,
    among the first floor(rows / world) * world (every rank the same count, so the ranks' passes end on
    the same step), in stream order, without the `ROW` column. world=1: the whole stream, unchanged.
    None for a dataset `read_rows` did not make (it has no stream positions to split on).

    Row-interleaved, as torch's DistributedSampler deals indices (`indices[rank::world]`): a step's
    micro-batches over all ranks are the stream's next step-sized window, the same rows a single worker
    accumulating world x grad_accum micro-batches takes. Splitting whole blocks instead (Ray Data's
    streaming_split) gave two workers identical copies of a one-file set in lockstep: each step held
    every row twice. The select runs in the read's task (same `num_cpus`: Ray Data fuses the two)."""
    stream = ds.context.get_config(_STREAM)
    if stream is None:
        return None
    usable = stream["rows"] // world * world
    return [ds.map_batches(_keep_rank, fn_kwargs={"rank": r, "world": world, "usable": usable}, batch_size=None,
                           batch_format="pyarrow", num_cpus=stream["num_cpus"]) for r in range(world)]


def _keep_rank(table, rank: int, world: int, usable: int):
    import numpy as np

    pos = table.column(ROW).to_numpy()
    table = table.drop_columns([ROW])
    if world == 1:  # usable = every row
        return table
    return table.take(np.flatnonzero((pos % world == rank) & (pos < usable)))


def data_config(dataset_names, num_workers: int):
    """Ray Train's DataConfig with llmray's split. A set `read_rows` made is dealt row by row when it is a
    "train*" set and there are several workers (`llmray.train.data.rank_shards`: rank r gets stream rows
    r, r + world, ...; each worker runs its own read, so no SplitCoordinator actor starts), and goes whole
    to every worker otherwise (rank_shards(ds, 1): all rows in order, without the `ROW` column), so one
    worker reads the same batches in a group or in-process (llmray.train.loop's in-process fit configures
    through this too). A dataset read_rows did not make keeps Ray's own handling (streaming_split for
    "train*").
    The class is made here because the package imports no Ray at module level; cloudpickle ships it by
    value to the Train controller."""
    import copy

    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True  # the same rows reach the same worker in the same order every run
    split = [n for n in dataset_names if n.startswith("train")] if num_workers > 1 else []

    class RowSplitConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out, rest = [{} for _ in range(world_size)], {}
            for name, ds in datasets.items():
                shards = rank_shards(ds, world_size if name in split else 1)
                if shards is None:
                    rest[name] = ds
                    continue
                for rank in range(world_size):
                    part = shards[rank % len(shards)]
                    part.set_name(name)
                    part.context.execution_options = copy.deepcopy(options)
                    out[rank][name] = part.iterator()
            if rest:
                for mine, theirs in zip(out, super().configure(rest, world_size, worker_handles, worker_node_ids,
                                                               **kwargs)):
                    mine.update(theirs)
            return out

    return RowSplitConfig(datasets_to_split=split, execution_options=options)


def rows_needed(train_cfg, num_workers: int) -> int:
    """Training rows a run consumes (every worker, every micro-batch), plus one spare batch each."""
    per_step = train_cfg.grad_accum * train_cfg.micro_batch_size * num_workers
    return (train_cfg.steps + 1) * per_step


def epoch_order(n: int, seed: int | None, epoch: int, file: int | None = None):
    """The order of `n` items in one data epoch: 0..n-1 without a seed, else a permutation seeded by
    (seed, epoch) -- the files' order -- or by (seed, epoch, file) -- one file's rows."""
    import numpy as np

    if seed is None:
        return np.arange(n)
    seed &= (1 << 64) - 1  # numpy's seed words are unsigned; a negative train.seed still works
    # A tag first: numpy's SeedSequence ignores trailing zero words, so [seed, 0] and [seed, 0, 0] collide.
    key = [1, epoch, seed] if file is None else [2, file, epoch, seed]
    return np.random.default_rng(key).permutation(n)


def _read_parquet_files(batch, columns: list[str] | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for item in batch.to_pylist():
        t = pq.read_table(item["path"], columns=columns)
        if item["seed"] is not None:
            t = t.take(epoch_order(t.num_rows, item["seed"], item["epoch"], item["file"]))
        offset = item["offset"]
        tables.append(t.append_column(ROW, pa.array(range(offset, offset + t.num_rows), pa.int64())))
    return pa.concat_tables(tables)


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
