"""The causal-LM task of the `pretrain` kind (and domain fine-tuning with replay), plus data statistics.

Data flow: tokenize stage `train/`, `val/` (+ optional replay stage `train/`, `val/`) --Ray Data-->
"train", "val" (+ "train_replay", "val_general") datasets -> workers: the train stream is
the domain stream alone, or domain and replay interleaved at `replay_fraction`; evaluation
reports `val_loss`/`val_ppl` (and `val_general_loss`/`val_general_ppl`).
The model comes from a preset (`model`: ModelConfig as a dict; seeded init) or from a
HF folder (`hf_dir`: an `init:` stage's `model/` or a `from:` checkpoint).
`unigram_entropy` is the baseline a language model must beat: the entropy (nats) of the
train tokens' unigram distribution, i.e. the loss of the best model that ignores context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from llmray.train.data import BatchStream, MixedStream, read_rows
from llmray.train.task import BaseTask


@dataclass
class CausalLMTask(BaseTask):
    train_dir: Path
    val_dir: Path | None
    tokenizer_dir: Path
    model: dict | None = None  # ModelConfig fields, for a model trained from scratch
    hf_dir: Path | None = None  # a HF folder to start from instead
    replay_train_dir: Path | None = None
    replay_val_dir: Path | None = None
    replay_fraction: float = 0.0
    data_cpus: float = 0.0
    min_rows: int = 0  # rows the run consumes (llmray.train.data.rows_needed): several epochs, one pass
    shuffle_seed: int | None = None  # train rows in a new seeded order every epoch (None: the shards' order)

    def datasets(self) -> dict:
        ds = {"train": read_rows(self.train_dir, ["input_ids"], self.data_cpus, self.min_rows,
                                 self.shuffle_seed)}
        if self.val_dir is not None and any(Path(self.val_dir).glob("*.parquet")):
            ds["val"] = read_rows(self.val_dir, ["input_ids"], self.data_cpus)
        if self.replay_train_dir is not None and self.replay_fraction > 0:
            # Over-provisioning costs nothing: a pass is read lazily, only as far as it is consumed.
            ds["train_replay"] = read_rows(self.replay_train_dir, ["input_ids"], self.data_cpus, self.min_rows,
                                           self.shuffle_seed)
        if self.replay_val_dir is not None and any(Path(self.replay_val_dir).glob("*.parquet")):
            ds["val_general"] = read_rows(self.replay_val_dir, ["input_ids"], self.data_cpus)
        return ds

    def train_stream(self, epochs: dict):
        main = BatchStream(epochs["train"], self.collate)
        if "train_replay" not in epochs:
            return main
        return MixedStream(main, BatchStream(epochs["train_replay"], self.collate), self.replay_fraction)

    def build_model(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        from llmray.models import ModelConfig, llama_config

        if self.hf_dir is not None:
            model = AutoModelForCausalLM.from_pretrained(str(self.hf_dir), dtype=torch.float32,
                                                         attn_implementation="sdpa")
        else:
            tok = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
            model = LlamaForCausalLM(llama_config(ModelConfig(**(self.model or {})), tok))
        return model


def check_vocab(tokenizer_dir: Path, hf_dir: Path) -> None:
    """Refuse to continue training a model on data encoded with a different tokenizer."""
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    model_tok_dir = Path(hf_dir)
    if (model_tok_dir / "tokenizer.json").exists():
        model_tok = AutoTokenizer.from_pretrained(str(model_tok_dir))
        if model_tok.get_vocab() != tok.get_vocab():
            raise ValueError(f"the data was tokenized with a different vocabulary than {hf_dir}'s tokenizer")
    if cfg.get("vocab_size", 0) < len(tok):
        raise ValueError(f"{hf_dir} has vocab_size {cfg.get('vocab_size')} < the data tokenizer's {len(tok)}")


def unigram_entropy(train_dir: Path, max_tokens: int = 50_000_000) -> dict:
    """Entropy (nats) of the unigram token distribution of the train shards (first `max_tokens`)."""
    import numpy as np
    import pyarrow.parquet as pq

    counts = np.zeros(0, dtype=np.int64)
    seen = 0
    for f in sorted(Path(train_dir).glob("*.parquet")):
        col = pq.read_table(f, columns=["input_ids"]).column("input_ids").combine_chunks()
        ids = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)[: max_tokens - seen]
        binc = np.bincount(ids)
        if len(binc) > len(counts):
            counts = np.pad(counts, (0, len(binc) - len(counts)))
        counts[: len(binc)] += binc
        seen += len(ids)
        if seen >= max_tokens:
            break
    p = counts[counts > 0] / max(seen, 1)
    return {"unigram_entropy": float(-(p * np.log(p)).sum()), "unigram_tokens": int(seen),
            "unigram_perplexity": float(math.exp(-(p * np.log(p)).sum()))}
