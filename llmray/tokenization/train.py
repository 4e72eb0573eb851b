"""Training a byte-level BPE tokenizer on a curate stage's output, streamed through Ray Data.

curate data/*.parquet (id, text)
  --parquet metadata--> corpus size --> the sampling rate that yields about `sample_bytes`
  --Ray Data read_parquet + map_batches(_select)--> documents tagged `heldout` (id hash below
    heldout_fraction: the same hash and seed as tokenize's val split) or `train` (an
    independent id hash below the sampling rate, so the sample spans the whole corpus)
  --iter_batches on the driver (preserve_order: the same sample every run)-->
  train texts (capped by sample_bytes / sample_docs) --llmray.tok.train_bpe--> tokenizer folder
  held-out texts (capped by eval_docs) --quality.compression_report--> the stage's metrics.
Reading and hashing run in Ray tasks; only the selected documents reach the driver, which
holds the sample in memory (the BPE trainer counts words over all of it anyway).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from llmray.rayutil import read_parquet
from llmray.tokenization.split import SAMPLE_SALT, buckets, val_mask


def corpus_size(data_dir: Path) -> tuple[int, int]:
    """(documents, approximate text bytes) from the parquet footers alone."""
    import pyarrow.parquet as pq

    rows = text_bytes = 0
    for f in sorted(Path(data_dir).rglob("*.parquet")):
        md = pq.ParquetFile(f).metadata
        rows += md.num_rows
        for rg in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(rg).column(c)
                if col.path_in_schema == "text":
                    text_bytes += col.total_uncompressed_size
    return rows, text_bytes


def _select(batch, sample_rate: float, heldout_fraction: float, seed: int):
    """Keep held-out documents and the sampled training documents, tagged with their role."""
    import pyarrow as pa

    ids = batch.column("id").to_pylist()
    held = val_mask(ids, heldout_fraction, seed)
    picked = buckets(ids, seed, SAMPLE_SALT) < sample_rate
    role = np.where(held, "heldout", np.where(picked, "train", ""))
    keep = role != ""
    return batch.filter(pa.array(keep)).append_column("role", pa.array(role[keep].tolist(), pa.string()))


def ordered(ds):
    """The dataset, set to yield its output in input order (a deterministic stream). The setting
    goes on the dataset's own copy of the DataContext, which its execution reads."""
    ds.context.execution_options.preserve_order = True
    return ds


def stream_sample(data_dir: Path, *, sample_bytes: int, sample_docs: int | None, heldout_fraction: float,
                  eval_docs: int, seed: int) -> tuple[list[str], list[str], dict]:
    """(training texts, held-out texts, sampling figures) streamed from the curated parquet."""
    n_docs, n_bytes = corpus_size(data_dir)
    if n_docs == 0:
        raise ValueError(f"no documents in {data_dir}: the curate stage produced an empty corpus")
    # Aim a little over the caps (the byte count from metadata is approximate); the caps cut exactly.
    rate = min(1.0, 1.2 * sample_bytes / max(n_bytes, 1))
    if sample_docs is not None:
        rate = min(rate, 1.2 * sample_docs / n_docs)
    ds = read_parquet(data_dir).select_columns(["id", "text"])
    ds = ds.map_batches(_select, fn_kwargs={"sample_rate": rate, "heldout_fraction": heldout_fraction,
                                            "seed": seed}, batch_format="pyarrow", batch_size=1024)
    train: list[str] = []
    held: list[str] = []
    train_bytes = 0
    for batch in ordered(ds).iter_batches(batch_size=None, batch_format="pyarrow"):
        for text, role in zip(batch.column("text").to_pylist(), batch.column("role").to_pylist()):
            if not text:
                continue
            if role == "heldout":
                if len(held) < eval_docs:
                    held.append(text)
            elif train_bytes < sample_bytes and (sample_docs is None or len(train) < sample_docs):
                train.append(text)
                train_bytes += len(text.encode("utf-8"))
    figures = {"corpus_docs": n_docs, "sample_rate": round(rate, 6), "sample_docs": len(train),
               "sample_bytes": train_bytes}
    return train, held, figures


def train_tokenizer(cfg, data_dir: Path, out_dir: Path, log, cost=None) -> dict:
    """Train on the sample, save to `out_dir`, return the metrics (report on held-out docs). `cost` (a
    `llmray.stages.base.FixedCost`) gets data (the sample read), eval (the report), export (the save);
    the work is `train_seconds`."""
    from llmray.stages.base import FixedCost
    from llmray.tok import save_tokenizer, train_bpe
    from llmray.tokenization.quality import compression_report

    cost = cost or FixedCost()
    with cost.phase("data"):
        texts, held, figures = stream_sample(
            data_dir, sample_bytes=cfg.sample_bytes, sample_docs=cfg.sample_docs,
            heldout_fraction=cfg.heldout_fraction, eval_docs=cfg.eval_docs, seed=cfg.split_seed)
    if not texts:
        raise ValueError("the training sample is empty: every document is held out or empty; "
                         "lower heldout_fraction")
    log.info("training BPE (vocab %d, min_frequency %d) on %d docs, %d bytes",
             cfg.vocab_size, cfg.min_frequency, figures["sample_docs"], figures["sample_bytes"])
    t0 = time.time()
    hf = train_bpe(texts, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    train_seconds = time.time() - t0
    with cost.phase("export"):
        save_tokenizer(hf, out_dir)
    if len(hf) < cfg.vocab_size:
        log.warning("the sample only supports %d tokens (< vocab_size %d): add data or lower min_frequency",
                    len(hf), cfg.vocab_size)
    with cost.phase("eval"):
        report = compression_report(hf.backend_tokenizer, held)
    return {"vocab_size": len(hf), "train_seconds": round(train_seconds, 3), **figures, **report}


def copy_tokenizer(src: Path, out_dir: Path, data_dir: Path | None, cfg, log) -> dict:
    """Copy an existing HF tokenizer folder unchanged; report on held-out docs when data is given."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from llmray.tokenization.quality import compression_report

    src = Path(src).expanduser()
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"from: {src} has no tokenizer.json (a fast HF tokenizer folder is required)")
    shutil.copytree(src, out_dir)
    hf = AutoTokenizer.from_pretrained(str(out_dir))  # fails early if transformers cannot load it
    if hf.eos_token_id is None or not getattr(hf, "chat_template", None):
        log.warning("tokenizer from %s lacks an eos token or a chat template; tokenize/sft need both", src)
    metrics = {"vocab_size": len(hf), "source": str(src)}
    if data_dir is not None:
        _, held, figures = stream_sample(data_dir, sample_bytes=0, sample_docs=0,
                                         heldout_fraction=cfg.heldout_fraction, eval_docs=cfg.eval_docs,
                                         seed=cfg.split_seed)
        metrics.update(corpus_docs=figures["corpus_docs"],
                       **compression_report(Tokenizer.from_file(str(out_dir / "tokenizer.json")), held))
    return metrics
