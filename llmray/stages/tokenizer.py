"""Stage kind `tokenizer`: a byte-level BPE tokenizer trained on a curate stage's corpus, or an
existing HF tokenizer folder copied unchanged (`from:`).

curate data/*.parquet --(Ray Data: uniform sample by id hash; held-out docs by the val-split
hash)--> llmray.tok.train_bpe (GPT-4/Llama-3 style split, byte-level, the special tokens and
chat template of llmray.chat) --> `tokenizer/` (loadable by transformers.AutoTokenizer).
Metrics: vocab_size, bytes_per_token, words_per_token, fallback_byte_share, unk_tokens on
held-out docs, train_seconds, sample sizes. Implementation: llmray.tokenization.train.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from llmray.config import EXTERNAL_INPUT, StageConfig
from llmray.resources import DataPlacement

VERSION = "1"

# Fields that only make sense when training (refused together with `from`).
TRAINING_FIELDS = ("vocab_size", "min_frequency", "sample_bytes", "sample_docs")


class Config(StageConfig):
    """Train a BPE tokenizer on a curated corpus, or copy an existing one."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)
    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"data": ("curate",)}

    kind: Literal["tokenizer"] = Field("tokenizer", description="Selects this stage kind.")
    data: str | None = Field(
        None, description="curate stage whose corpus trains the tokenizer and gives the held-out report "
                          "documents. Required unless `from` is set.")
    from_: str | None = Field(
        None, alias="from", json_schema_extra=EXTERNAL_INPUT, description="Local folder of an existing HF tokenizer (with tokenizer.json), "
                                        "copied unchanged instead of training.")
    vocab_size: int = Field(8192, ge=512, le=2**20,
                            description="Vocabulary size, including the special tokens of llmray.chat.")
    min_frequency: int = Field(2, ge=1, description="A pair must occur this often in the sample to be merged.")
    sample_bytes: int = Field(
        100_000_000, ge=1000, description="Cap on the UTF-8 bytes of the training sample; documents are "
                                          "drawn uniformly across the corpus by id hash.")
    sample_docs: int | None = Field(None, ge=1, description="Cap on documents in the training sample (none: "
                                                             "only sample_bytes caps it).")
    heldout_fraction: float = Field(
        0.01, ge=0, lt=0.5, description="Share of documents (by id hash: the same hash as tokenize's val split "
                                        "with the same split_seed) never trained on; the report is measured "
                                        "on them. Keep >= tokenize.val_fraction so val text stays unseen.")
    eval_docs: int = Field(2000, ge=1, description="At most this many held-out documents are measured.")
    split_seed: int = Field(0, description="Seed of the document-id hash; keep equal to tokenize.split_seed.")

    placement: DataPlacement = Field(
        default_factory=DataPlacement, description="Nodes this stage's Ray Data work may use (node labels).")

    @model_validator(mode="after")
    def _source(self):
        if self.from_ is None and self.data is None:
            raise ValueError("set `data` (a curate stage to train on) or `from` (a tokenizer folder to copy)")
        if self.from_ is not None:
            # Compared with the defaults (not model_fields_set) so a resolved config file reloads.
            given = [f for f in TRAINING_FIELDS if getattr(self, f) != type(self).model_fields[f].default]
            if given:
                raise ValueError(f"{', '.join(given)} apply only when training; remove them or `from`")
        return self


def run(config: Config, ctx):
    from pathlib import Path

    from llmray.stages.base import FixedCost, StageResult
    from llmray.tokenization.train import copy_tokenizer, train_tokenizer

    cost = FixedCost()
    out = Path(ctx.out_dir) / "tokenizer"
    data_dir = ctx.input("data").path("data") if ctx.has_input("data") else None
    if config.from_ is not None:
        with cost.phase("export"):  # a copy: no work to measure, all of it fixed cost
            metrics = copy_tokenizer(Path(config.from_), out, data_dir, config, ctx.log)
        metrics["fixed_cost"] = cost.metrics(work_s=0.0)
    else:  # work: BPE training; data: reading the sample; eval: the held-out report; export: the save
        metrics = train_tokenizer(config, data_dir, out, ctx.log, cost=cost)
        metrics["fixed_cost"] = cost.metrics(work_s=metrics["train_seconds"])
    ctx.log.info("tokenizer: %s", metrics)
    return StageResult(metrics=metrics, outputs={"tokenizer": "tokenizer"})
