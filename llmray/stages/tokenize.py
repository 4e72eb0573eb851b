"""Stage kind `tokenize`: a curated corpus -> packed, fixed-length token shards for pretraining.

curate data/*.parquet + tokenizer/ --(Ray Data actor pool: encode_batch_fast, EOS after every
document, packing into seq_len rows, train/val by document-id hash)--> `train/*.parquet`,
`val/*.parquet` (column `input_ids`: list<uint16> of exactly seq_len ids; int32 when the
vocabulary exceeds 65536) and `tokenizer/` (a copy of the tokenizer stage's folder).
Remainders: what a batch leaves over carries into the next batch (packing is the same for any
batch size or pool size); only the last < seq_len tokens of each split are not written, and
they are counted (dropped_tail_tokens).
Implementation: llmray.tokenization.shards.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llmray.config import EXECUTION_ONLY, StageConfig
from llmray.resources import DataPlacement

VERSION = "1"


class Config(StageConfig):
    """Tokenize and pack a curated corpus into train/val token shards."""

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"data": ("curate",), "tokenizer": ("tokenizer",)}

    kind: Literal["tokenize"] = Field("tokenize", description="Selects this stage kind.")
    data: str = Field(description="curate stage whose data/*.parquet (id, text) is tokenized.")
    tokenizer: str = Field(description="tokenizer stage whose tokenizer/ folder is used (and copied).")
    seq_len: int = Field(256, ge=8, le=1_048_576, description="Tokens per packed row (the training context).")
    val_fraction: float = Field(
        0.01, ge=0, lt=0.5, description="Share of documents (by id hash, deterministic) in the val split.")
    split_seed: int = Field(0, description="Seed of the document-id hash; keep equal to tokenizer.split_seed.")
    batch_size: int | None = Field(
        None, json_schema_extra=EXECUTION_ONLY, ge=1, description="Documents per Ray Data batch sent to a tokenizer actor (none: automatic, the "
                                "fewest batches of <= 4096 docs whose count is a multiple of the pool size).")
    actors: int | None = Field(None, ge=1, description="Tokenizer actors in the pool (none: one per cluster CPU).")
    in_process_max_mb: float = Field(
        64.0, ge=0, json_schema_extra=EXECUTION_ONLY,
        description="A corpus of at most this many MB of text (with `actors` and `placement` left unset) is "
                    "tokenized in the driver's process, one thread per CPU of its node: the same batches and "
                    "shards without the actor pool's start-up of a few seconds, which is most of the time "
                    "on a small corpus. 0: always the Ray Data actor pool.")
    rows_per_shard: int = Field(8192, ge=1, description="Rows (packed sequences) per parquet shard file.")
    placement: DataPlacement = Field(
        default_factory=DataPlacement, description="Nodes this stage's Ray Data work may use (node labels).")


def run(config: Config, ctx):
    import shutil
    import time
    from pathlib import Path

    from llmray.stages.base import FixedCost, StageResult
    from llmray.tokenization.shards import tokenize_corpus

    out = Path(ctx.out_dir)
    tok_dir = ctx.input("tokenizer").path("tokenizer")
    cost, t0 = FixedCost(), time.time()
    res = tokenize_corpus(ctx.input("data").path("data"), tok_dir, out, seq_len=config.seq_len,
                          val_fraction=config.val_fraction, seed=config.split_seed,
                          batch_size=config.batch_size, actors=config.actors,
                          rows_per_shard=config.rows_per_shard, log=ctx.log,
                          # with a placement the work must run on the labelled nodes: the pool
                          in_process_max_mb=0.0 if config.placement.labels else config.in_process_max_mb)
    elapsed = time.time() - t0
    # Fixed cost: startup = the stage's start -> the first tokenizer call (transformers' import, the tokenizer
    # load, the pool or threads); work = first call -> last call; export = the tokenizer's copy; other = the
    # last shards written and checked.
    cost.work(*res["window"])
    cost.add("startup", cost.uncovered())
    with cost.phase("export"):
        shutil.copytree(tok_dir, out / "tokenizer")
    metrics = _metrics(res, config.seq_len, elapsed)
    metrics["fixed_cost"] = cost.metrics(work_s=cost.work_s())
    _check_rows_exist(metrics, config.seq_len, config.val_fraction)
    ctx.log.info("tokenize: %s", metrics)
    return StageResult(metrics=metrics, outputs={"train": "train", "val": "val", "tokenizer": "tokenizer"})


def _metrics(res: dict, seq_len: int, elapsed: float) -> dict:
    """Flat metrics: totals, then per split (tokens = tokens in rows; corpus_tokens adds the dropped tail)."""
    sp = res["splits"]
    m = {"seq_len": seq_len, "vocab_size": res["vocab_size"], "dtype": res["dtype"], "actors": res["actors"],
         "batch_size": res["batch_size"], "in_process": res["in_process"], "startup_s": res["startup_s"]}
    for s in ("train", "val"):
        rows = sp[s].get("sequences", 0)
        m.update({f"{s}_docs": sp[s].get("docs", 0), f"{s}_sequences": rows, f"{s}_tokens": rows * seq_len,
                  f"{s}_shards": sp[s].get("shards", 0),
                  f"{s}_dropped_tail_tokens": sp[s].get("dropped_tail_tokens", 0)})
    m["sequences"] = m["train_sequences"] + m["val_sequences"]
    m["tokens"] = m["sequences"] * seq_len
    m["dropped_tail_tokens"] = m["train_dropped_tail_tokens"] + m["val_dropped_tail_tokens"]
    m["corpus_tokens"] = m["tokens"] + m["dropped_tail_tokens"]
    m["docs"] = m["train_docs"] + m["val_docs"]
    m["elapsed_s"] = round(elapsed, 2)
    m["tokens_per_s"] = round(m["corpus_tokens"] / max(elapsed, 1e-9), 1)
    # Throughput without Ray Data's start-up: per busy actor-second, and per core over the span
    # in which the actors ran.
    m["tokens_per_actor_s"] = round(m["corpus_tokens"] / max(res["actor_busy_s"], 1e-9), 1)
    m["steady_tokens_per_s_per_actor"] = round(
        m["corpus_tokens"] / max(res["actor_window_s"], 1e-9) / res["actors"], 1)
    return m


def _check_rows_exist(m: dict, seq_len: int, val_fraction: float) -> None:
    """Refuse outputs a training stage cannot use (no train row, or no val row when val was asked for)."""
    if m["train_sequences"] == 0:
        raise ValueError(f"no full training row: {m['train_dropped_tail_tokens']} train tokens < seq_len "
                         f"{seq_len}; add data or lower seq_len")
    if val_fraction > 0 and m["val_sequences"] == 0:
        raise ValueError(f"val_fraction {val_fraction} gave no full val row ({m['val_docs']} docs, "
                         f"{m['val_dropped_tail_tokens']} tokens < seq_len {seq_len}); raise val_fraction "
                         "or lower seq_len")
