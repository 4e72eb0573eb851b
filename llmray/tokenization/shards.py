"""Tokenizing a curated corpus into packed token shards with a Ray Data actor pool.

curate data/*.parquet (id, text)
  --read_parquet, repartition into blocks of `batch_size` documents (preserve_order; automatic:
    balanced batches of <= 4096 docs, a multiple of the pool size, see `batch_plan`)-->
  --TokenizeWorker (actor pool; the tokenizer is loaded once per actor)--> per batch and split
    (val = id hash below val_fraction, see `split`): encode_batch_fast, EOS after every
    document --> one token stream per split (the expensive part, in parallel)
  --iter_batches on the driver, in corpus order--> per split a StreamPacker concatenates the
    streams and cuts full rows of seq_len as they form --> ShardWriter writes
    <split>/part-00000.parquet, ... (`rows_per_shard` rows each).
Remainders: the part of a batch's stream that does not fill a row is carried into the next
batch's, so packing is exactly `cut(doc1 EOS doc2 EOS ...)` over the whole split, whatever the
batch boundaries; the shards are the same for any batch_size or pool size. Only the last
< seq_len tokens of each split do not fill a row: they are counted (`dropped_tail_tokens`)
and not written. The driver only concatenates and writes (a few ns per token), so it keeps up
with many tokenizer actors; the counts are checked against the rows on disk at the end.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from llmray.rayutil import read_parquet
from llmray.tokenization.packing import RowPacker, ShardWriter, count_rows, join_with_eos, token_dtype
from llmray.tokenization.split import val_mask

SPLITS = ("train", "val")


class TokenizeWorker:
    """One actor of the pool: the tokenizer is loaded once; per batch, one EOS-joined stream per split."""

    def __init__(self, tokenizer_file: str, eos_id: int, val_fraction: float, seed: int, dtype: str):
        # One core per actor: the pool provides the parallelism, rayon threads would oversubscribe.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_file)
        # A literal "<|endoftext|>" inside a document is text; only the EOS we add separates documents.
        self.tok.encode_special_tokens = True
        self.eos_id, self.val_fraction, self.seed, self.dtype = eos_id, val_fraction, seed, np.dtype(dtype)

    def __call__(self, batch):
        import pyarrow as pa

        t0 = time.time()
        ids = batch.column("id").to_pylist()
        texts = [t or "" for t in batch.column("text").to_pylist()]
        is_val = val_mask(ids, self.val_fraction, self.seed).tolist()
        encoded = [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)] if texts else []
        streams, docs = [], []
        for want in (False, True):  # train, val
            chosen = [doc for doc, v in zip(encoded, is_val) if v == want]
            streams.append(join_with_eos(chosen, self.eos_id, self.dtype))
            docs.append(len(chosen))
        offsets = pa.array(np.cumsum([0] + [len(s) for s in streams], dtype=np.int64))
        values = pa.array(np.concatenate(streams))
        # When this call ran: busy seconds give the in-actor throughput, the span of all calls the
        # steady-state throughput (both leave out Ray Data's start-up).
        t1 = time.time()
        return pa.table({"split": list(SPLITS), "docs": docs, "start": [t0, t0], "end": [t1, t1],
                         "ids": pa.LargeListArray.from_arrays(offsets, values)})


def stage_cpus() -> float:
    """CPUs of the alive nodes this stage's Ray Data work may use: every node, or with a data
    `placement` (the DataContext's label selector, set by the runner) only the labelled ones."""
    import ray
    from ray.data import DataContext

    selector = DataContext.get_current().execution_options.label_selector or {}
    total = sum(n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes()
                if n.get("Alive") and all((n.get("Labels") or {}).get(k) == v for k, v in selector.items()))
    return total or 1.0


def actor_cpus(cpus: float, n_actors: int) -> float:
    """CPU reservation per actor: the pool leaves one of the stage's `cpus` unreserved.

    Ray Data lists the input files (and repartitions) in tasks that need one CPU; a pool
    reserving every CPU starts first and those tasks never run (a hang seen with Ray 2.60 on a
    2-CPU machine, and on a labelled 2-CPU head when the count was of the whole cluster's CPUs).
    Each actor still runs on a full core; the fraction is Ray's bookkeeping only.
    """
    return max(0.0, min(1.0, (cpus - 1.0) / n_actors))


# Largest automatic batch: a few MB of text per call keeps Ray's per-call overhead (scheduling,
# object transfer) to a few percent of the tokenizer work, and the pool's tail short.
MAX_AUTO_BATCH = 4096


def batch_plan(n_docs: int, n_actors: int, batch_size: int | None) -> int:
    """Documents per batch. Given: used as is. Automatic (None): the fewest batches of at most
    MAX_AUTO_BATCH docs whose count is a multiple of the pool size, so the actors finish
    together instead of one of them tokenizing the last batch alone (measured: 1,024-doc batches
    left the actors idle ~10% of the run on 2 cores; balanced 3-4k-doc batches ~5%)."""
    if batch_size is not None:
        return batch_size
    rounds = max(1, -(-n_docs // (n_actors * MAX_AUTO_BATCH)))
    return max(1, -(-n_docs // (rounds * n_actors)))


class StreamPacker:
    """Per split: token streams in, full rows out to a ShardWriter; the remainder carries over."""

    def __init__(self, out_dir: Path, seq_len: int, dtype, rows_per_shard: int):
        self.packer = RowPacker(seq_len, dtype)
        self.writer = ShardWriter(out_dir, "part", seq_len, dtype, rows_per_shard)
        self.counts: Counter = Counter()

    def add(self, stream, docs: int) -> None:
        self.counts.update(docs=docs, tokens=len(stream), batches=1)
        self.writer.add(self.packer.add(stream))

    def close(self) -> dict:
        self.writer.close()
        self.counts.update(sequences=self.writer.rows, shards=self.writer.shards,
                           dropped_tail_tokens=len(self.packer.remainder))
        return dict(self.counts)


def tokenize_corpus(data_dir: Path, tokenizer_dir: Path, out_dir: Path, *, seq_len: int, val_fraction: float,
                    seed: int, batch_size: int | None, actors: int | None, rows_per_shard: int, log,
                    in_process_max_mb: float = 0.0) -> dict:
    """Write `<out_dir>/train`, `<out_dir>/val` shards; return counts per split (see module doc).
    A corpus of at most `in_process_max_mb` MB of text (pool size left automatic; the caller passes 0
    when the work must stay on labelled nodes) is tokenized in this process by one thread per CPU instead (`tokenize_local`): the same batches and
    code, without the pool's fixed start-up."""
    from transformers import AutoTokenizer

    from llmray.tokenization.train import corpus_size

    t_start = time.time()
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if hf.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer_dir} has no eos token to separate documents")
    vocab_size = len(hf)
    dtype = token_dtype(vocab_size)
    n_docs, n_bytes = corpus_size(data_dir)
    worker = {"tokenizer_file": str(Path(tokenizer_dir) / "tokenizer.json"), "eos_id": int(hf.eos_token_id),
              "val_fraction": val_fraction, "seed": seed, "dtype": dtype.name}
    packers = {s: StreamPacker(Path(out_dir) / s, seq_len, dtype, rows_per_shard) for s in SPLITS}
    for s in SPLITS:
        (Path(out_dir) / s).mkdir(parents=True, exist_ok=True)
    in_process = actors is None and n_bytes <= in_process_max_mb * 1e6
    if in_process:
        import ray

        # this node's cores (Ray may have been given fewer); no ray.data import (a second of start-up)
        ray_cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1 << 16
        threads = max(1, min(os.cpu_count() or 1, ray_cpus))
        batch_size = batch_plan(n_docs, threads, batch_size)
        log.info("tokenizing %s in-process with %d threads, batches of %d docs, seq_len %d, %s", data_dir, threads,
                 batch_size, seq_len, dtype.name)
        calls = tokenize_local(data_dir, worker, threads, batch_size, packers)
        n_actors = threads
    else:
        n_actors, batch_size, calls = _tokenize_pool(data_dir, worker, n_docs, actors, batch_size, seq_len, packers,
                                                     log)
    counts = {s: packers[s].close() for s in SPLITS}
    for s in SPLITS:
        _check_rows(Path(out_dir) / s, counts[s], seq_len)
    first = min((s for s, _ in calls), default=t_start)
    # startup_s: from the call to the first batch in an actor (Ray Data planning, actor processes,
    # the first read) -- a fixed cost per run, whatever the corpus size.
    last = max((e for _, e in calls), default=first)
    timing = {"actor_busy_s": round(sum(e - s for s, e in calls), 3), "actor_window_s": round(last - first, 3),
              "startup_s": round(first - t_start, 3), "window": (first, last)}  # wall clock: the stage's work span
    return {"vocab_size": vocab_size, "dtype": dtype.name, "actors": n_actors, "batch_size": batch_size,
            "in_process": in_process,
            "splits": counts, **timing}


def _drain(batch, packers: dict, calls: set) -> None:
    """One TokenizeWorker output table -> the split packers, in order; its call's (start, end) noted."""
    col = batch.column("ids").combine_chunks()
    values, offsets = np.asarray(col.values), np.asarray(col.offsets)
    for i, (split, docs) in enumerate(zip(batch.column("split").to_pylist(), batch.column("docs").to_pylist())):
        packers[split].add(values[offsets[i]:offsets[i + 1]], docs)
    calls.update(zip(batch.column("start").to_pylist(), batch.column("end").to_pylist()))


def tokenize_local(data_dir: Path, worker: dict, threads: int, batch_size: int, packers: dict) -> set:
    """The pool's work in this process: parquet files in name order (Ray Data's order), cut into
    batches of `batch_size` documents, each tokenized by a TokenizeWorker on a thread (the Rust
    tokenizer releases the GIL, so `threads` cores work), drained in corpus order. At most
    2 x threads batches are in flight, so memory stays bounded."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    tok = TokenizeWorker(**worker)  # one tokenizer for all threads; it turns rayon off: our threads are the cores
    calls: set = set()

    def batches():
        for f in sorted(Path(data_dir).rglob("*.parquet")):
            for b in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["id", "text"]):
                yield b

    with ThreadPoolExecutor(threads, thread_name_prefix="tokenize") as pool:
        pending: deque = deque()
        for b in batches():
            pending.append(pool.submit(tok, b))
            while len(pending) >= 2 * threads:
                _drain(pending.popleft().result(), packers, calls)
        while pending:
            _drain(pending.popleft().result(), packers, calls)
    if saved is None:  # leave the driver's environment as it was
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = saved
    return calls


def _tokenize_pool(data_dir, worker: dict, n_docs: int, actors: int | None, batch_size: int | None, seq_len: int,
                   packers: dict, log) -> tuple[int, int, set]:
    """The Ray Data actor pool (see the module docstring); (actors, batch size, call spans)."""
    import ray.data

    from llmray.tokenization.train import ordered

    cpus = stage_cpus()
    n_actors = actors or max(1, int(cpus))  # default: one tokenizer actor per CPU the stage may use
    batch_size = batch_plan(n_docs, n_actors, batch_size)
    # No more actors than batches (a tiny corpus would start actors that never get work).
    n_actors = max(1, min(n_actors, -(-n_docs // batch_size)))
    ds = read_parquet(data_dir, num_cpus=0).select_columns(["id", "text"])
    # Blocks of batch_size documents: a Ray Data task takes whole blocks, so one big block would
    # keep a single actor busy while the others idle.
    ds = ds.repartition(target_num_rows_per_block=batch_size).map_batches(
        TokenizeWorker, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=actor_cpus(cpus, n_actors),
        fn_constructor_kwargs=worker)
    log.info("tokenizing %s with %d actors, batches of %d docs, seq_len %d, %s", data_dir, n_actors,
             batch_size, seq_len, worker["dtype"])
    calls: set[tuple[float, float]] = set()  # (start, end) of each actor call (its two rows share it)
    # Corpus order in, corpus order out: the packing is reproducible.
    for batch in ordered(ds).iter_batches(batch_size=None, batch_format="pyarrow"):
        _drain(batch, packers, calls)
    return n_actors, batch_size, calls


def _check_rows(split_dir: Path, c: dict, seq_len: int) -> None:
    """Rows on disk must equal rows written, and tokens must add up (nothing lost or doubled)."""
    on_disk = count_rows(split_dir)
    if on_disk != c.get("sequences", 0):
        raise RuntimeError(f"{split_dir}: {on_disk} rows on disk but {c.get('sequences', 0)} written")
    if c.get("sequences", 0) * seq_len + c.get("dropped_tail_tokens", 0) != c.get("tokens", 0):
        raise RuntimeError(f"{split_dir}: token counts do not add up: {c.get('sequences', 0)} rows x {seq_len} + "
                           f"{c.get('dropped_tail_tokens', 0)} dropped != {c.get('tokens', 0)} tokens")
