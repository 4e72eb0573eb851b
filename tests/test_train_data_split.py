"""How the training rows reach the workers (llmray.train.data.rank_shards through fit's DataConfig).

With two or more workers every step's micro-batches, over all ranks, are the stream's next window of
distinct rows, and every row of a data epoch reaches exactly one worker, for a one-file set (the
quickstart's case: Ray Data's block split gave both ranks the same copy of the file in lockstep, so each
step held every row twice), fewer files than workers, and several files of unequal sizes. Each rank's
rows and their order are the same on every pass. With a shuffle seed every data epoch is its own
permutation of the rows, the same on every run, and the ranks still split it row by row.
Datasets read_rows did not make keep Ray's own split.
A real local Ray, tiny parquet folders; the iterators are those `fit` hands the workers.
"""

from __future__ import annotations

import threading
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _write(folder, sizes: list[int]) -> list[int]:
    """Parquet shards of rows [id, id] with distinct ids; returns the ids in stream (file-name) order."""
    folder.mkdir()
    ids, start = [], 0
    for j, n in enumerate(sizes):
        part = list(range(start, start + n))
        pq.write_table(pa.table({"input_ids": [[i, i] for i in part]}), folder / f"part-{j:05d}.parquet")
        ids += part
        start += n
    return ids


def _worker_iterators(folder, world: int, min_rows: int, name: str = "train", shuffle_seed: int | None = None):
    from llmray.train.data import data_config, read_rows

    ds = read_rows(folder, ["input_ids"], 0.0, min_rows, shuffle_seed)
    shards = data_config([name], world).configure({name: ds}, world_size=world, worker_handles=None,
                                                   worker_node_ids=None)
    return [s[name] for s in shards]


def _concurrently(iterators, read) -> list:
    """read(iterator) on every rank's iterator at once, as the workers do (a split's ranks advance together)."""
    out = [None] * len(iterators)

    def run(rank):
        out[rank] = read(iterators[rank])

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(iterators))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _micro_batches(iterators, batch: int) -> list[list[list[int]]]:
    """Every rank's micro-batches (row ids)."""
    return _concurrently(iterators, lambda it: [[int(r[0]) for r in b["input_ids"]] for b in it.iter_batches(
        batch_size=batch, batch_format="numpy", drop_last=True)])


@pytest.mark.parametrize("sizes,world,batch,accum", [
    ([40], 2, 4, 1),  # one file (the quickstart's pretraining set)
    ([9, 14], 3, 2, 2),  # fewer files than workers
    ([7, 13, 5, 11], 2, 3, 1),  # several files of unequal sizes; steps straddle the data epochs
])
def test_each_step_holds_distinct_rows_and_an_epoch_covers_every_row_once(ray_local, tmp_path, sizes, world,
                                                                          batch, accum):
    ids = _write(tmp_path / "train", sizes)
    n, step_rows, steps = len(ids), world * batch * accum, 12
    iterators = _worker_iterators(tmp_path / "train", world, min_rows=steps * step_rows)
    per_rank = _micro_batches(iterators, batch)
    for s in range(steps):
        rows = [i for m in per_rank for b in m[s * accum:(s + 1) * accum] for i in b]
        assert len(set(rows)) == len(rows) == step_rows, f"step {s}: a row on two ranks ({sorted(rows)})"
        # ... and they are the rows a single worker takes in that step: the stream's next window
        assert sorted(rows) == sorted((ids * (steps * step_rows // n + 2))[s * step_rows:(s + 1) * step_rows])
    flat = [[i for b in m for i in b] for m in per_rank]
    first_epoch = [i for r in range(world) for i in flat[r][:(n - r + world - 1) // world]]
    assert Counter(first_epoch) == Counter(ids)  # the first data epoch: every row on exactly one rank
    stream = ids * -(-steps * step_rows // n)  # read_rows' repeated file list
    usable = len(stream) // world * world
    for r in range(world):  # rank r: stream rows r, r + world, ... (equal counts), in order
        assert flat[r] == stream[r:usable:world][:len(flat[r])] and len(flat[r]) >= steps * accum * batch
    assert _micro_batches(iterators, batch) == per_rank  # the next pass: the same rows, same ranks, same order


def test_one_worker_reads_the_whole_stream_in_order_and_val_sets_go_whole(ray_local, tmp_path):
    """One worker (and the in-process path, which configures the same way) reads every row in file order,
    without the stream-position column; a "val" set reaches every worker whole."""
    from llmray.train.data import ROW

    ids = _write(tmp_path / "train", [6, 5])
    (one,) = _worker_iterators(tmp_path / "train", 1, min_rows=20)
    rows = [int(r["input_ids"][0]) for r in one.iter_rows()]
    assert rows == ids * 2  # 11 rows listed twice to reach min_rows
    assert ROW not in next(iter(one.iter_rows()))
    val = _worker_iterators(tmp_path / "train", 2, min_rows=0, name="val")
    assert [[int(r["input_ids"][0]) for r in it.iter_rows()] for it in val] == [ids, ids]


def test_a_shuffle_seed_gives_every_data_epoch_its_own_order_the_same_on_every_run(ray_local, tmp_path):
    """pretrain's `shuffle`: each repeat of the file list is a seeded permutation of all rows (files in a
    random order, rows permuted within each), a different one per epoch and per seed, reproduced exactly by a
    new read; two ranks still take distinct rows of each epoch, and every row once per epoch."""
    ids = _write(tmp_path / "train", [7, 13, 5])
    n = len(ids)

    def stream(seed):
        (one,) = _worker_iterators(tmp_path / "train", 1, min_rows=3 * n, shuffle_seed=seed)
        return [int(r["input_ids"][0]) for r in one.iter_rows()]

    rows = stream(7)
    epochs = [rows[e * n:(e + 1) * n] for e in range(3)]
    assert len(rows) == 3 * n and all(sorted(e) == ids for e in epochs)  # each epoch: every row once
    assert epochs[0] != ids and len({tuple(e) for e in epochs}) == 3  # shuffled, and anew every epoch
    assert stream(7) == rows and stream(8) != rows  # seeded: reproducible, and the seed matters
    per_rank = _micro_batches(_worker_iterators(tmp_path / "train", 2, min_rows=3 * n, shuffle_seed=7), 2)
    flat = [[i for b in m for i in b] for m in per_rank]
    usable = len(rows) // 2 * 2
    assert [flat[r] == rows[r:usable:2][:len(flat[r])] for r in range(2)] == [True, True]


def test_a_dataset_read_rows_did_not_make_keeps_rays_split(ray_local):
    """No stream positions to deal by: Ray Data's streaming_split still gives each row to one worker."""
    import ray.data

    from llmray.train.data import data_config, rank_shards

    ds = ray.data.from_items([{"x": i} for i in range(8)], override_num_blocks=2)
    assert rank_shards(ds, 2) is None
    its = [s["train"] for s in data_config(["train"], 2).configure({"train": ds}, 2, None, None)]
    rows = _concurrently(its, lambda it: [int(r["x"]) for r in it.iter_rows()])
    assert sorted(rows[0] + rows[1]) == list(range(8)) and rows[0] and rows[1]


def test_epoch_order_is_a_seeded_permutation_for_any_train_seed():
    """No seed: the identity; a seed (negative ones too: numpy's seed words are unsigned) gives a
    permutation that depends on the epoch and the file, and is the same on every call."""
    from llmray.train.data import epoch_order

    assert epoch_order(6, None, 3).tolist() == list(range(6))
    for seed in (0, 7, -1):
        orders = [epoch_order(50, seed, e, f).tolist() for e, f in ((0, None), (1, None), (0, 0), (0, 1))]
        assert all(sorted(o) == list(range(50)) for o in orders) and len({tuple(o) for o in orders}) == 4
        assert epoch_order(50, seed, 1).tolist() == orders[1]
