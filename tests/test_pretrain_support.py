"""Test support for the training tests (no tests here): token shards in the tokenize contract.

`write_token_shards` encodes texts with a tokenizer folder, separates documents with EOS, packs
them into rows of exactly `seq_len` ids and writes `train/`, `val/` parquet shards (column
`input_ids`, uint16) plus a copy of the tokenizer: what the real `tokenize` kind emits. The
`tokshards` stage kind wraps it so pipeline-level tests need no curate/tokenizer stages.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from llmray.config import StageConfig
from llmray.stages.base import StageResult

VERSION = "1"


def stdlib_corpus(limit: int | None = None, modules: list[str] | None = None) -> list[str]:
    """Docstring texts of the built-in python-docs corpus (deterministic, offline)."""
    from llmray.data.pydocs import iter_docs

    out = []
    for rec in iter_docs(modules):
        out.append(rec["text"])
        if limit and len(out) >= limit:
            break
    return out


def write_token_shards(texts: list[str], tokenizer_dir: Path, out_dir: Path, seq_len: int = 64,
                       val_every: int = 10, rows_per_shard: int = 200) -> dict:
    """Pack `texts` into train/val shards (every `val_every`-th document goes to val)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    eos = tok.eos_token_id
    streams = {"train": [], "val": []}
    for i, ids in enumerate(tok(texts, add_special_tokens=False)["input_ids"]):
        streams["val" if val_every and i % val_every == val_every - 1 else "train"].extend(ids + [eos])
    counts = {}
    for split, ids in streams.items():
        n = len(ids) // seq_len
        rows = np.asarray(ids[: n * seq_len], dtype=np.uint16).reshape(n, seq_len)
        d = Path(out_dir) / split
        d.mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, max(n, 1), rows_per_shard)):
            chunk = rows[start:start + rows_per_shard]
            arr = pa.array(list(chunk), type=pa.list_(pa.uint16()))
            pq.write_table(pa.table({"input_ids": arr}), d / f"part-{k:05d}.parquet")
        counts[f"{split}_sequences"] = int(n)
    shutil.copytree(tokenizer_dir, Path(out_dir) / "tokenizer", dirs_exist_ok=True)
    return {**counts, "seq_len": seq_len, "tokens": (counts["train_sequences"] + counts["val_sequences"]) * seq_len}


class Config(StageConfig):
    kind: Literal["tokshards"] = Field("tokshards", description="kind")
    tokenizer_dir: str = Field(description="Tokenizer folder.")
    seq_len: int = Field(64, description="Row length.")
    docs: int | None = Field(None, description="Documents of the built-in corpus (None: all).")
    modules: list[str] | None = Field(None, description="Only these stdlib modules.")


def stdlib_shards(tmp_path_factory, tokenizer_dir: Path, docs: int, seq_len: int, rows_per_shard: int = 200) -> Path:
    """A folder of token shards of the first `docs` stdlib documents (a module-scoped fixture's body).
    `rows_per_shard` sets the file count only: the stream of rows (file-name order) is the same for any value."""
    d = tmp_path_factory.mktemp("shards")
    write_token_shards(stdlib_corpus(docs), tokenizer_dir, d, seq_len=seq_len, rows_per_shard=rows_per_shard)
    return d


def run(cfg: Config, ctx) -> StageResult:
    texts = stdlib_corpus(cfg.docs, cfg.modules)
    metrics = write_token_shards(texts, Path(cfg.tokenizer_dir), ctx.out_dir, cfg.seq_len)
    return StageResult(metrics=metrics, outputs={"train": "train", "val": "val", "tokenizer": "tokenizer"})
