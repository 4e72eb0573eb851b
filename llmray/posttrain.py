"""What the post-training kinds (sft, reward, dpo) share: config fields, data preparation, batching.

Data flow on the driver (`prepare`): data spec (`builtin:<name>` or JSONL files)
--llmray.data.formats--> canonical records (bad ones -> `<stage>/quarantine/<split>.jsonl`)
--the stage's `encode` (chat template of the init model's tokenizer, assistant mask)--> token
rows, too-long ones quarantined too --> shuffled with the train seed --> parquet under
`ctx.work_dir/data/{train,val}` (the task holds only these paths; Ray Data streams them).
On the workers: `pad_batch` turns a numpy batch of variable-length lists into right-padded
tensors plus an attention mask. `eval_sums` sums per-batch figures over the held-out batches
and all ranks (equal forwards per rank, so FSDP2's collectives line up).
After training, `generate_samples` writes greedy answers to a few held-out prompts.

The top level imports only pydantic and llmray config modules (stage modules import this).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmray.config import StageConfig, StrictModel
from llmray.resources import Resources
from llmray.train.config import TrainConfig


class LoraConfig(StrictModel):
    """Low-rank adapters (PEFT) instead of full fine-tuning; merged into the saved model."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Names of the linear layers that get adapters.")

    @model_validator(mode="after")
    def _peft_installed(self):
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise ValueError("lora needs the `peft` package: pip install 'llmray[lora]' (or remove `lora:`)")
        return self


class PostTrainConfig(StageConfig):
    """Fields shared by sft, reward and dpo. Subclasses set `kind`, `INPUTS` and the data default."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)
    USE: ClassVar[str] = "chat"  # the record form the kind trains on (llmray.data.formats.Use)

    init: str | None = Field(None, description="Stage whose model/ is the starting point.")
    from_: str | None = Field(None, alias="from", description="Local HF checkpoint folder to start from "
                                                               "instead of a stage (needs a chat template).")
    data: str = Field(description="Training data: `builtin:<name>` or a path/glob of JSONL files.")
    eval_data: str | None = Field(None, description="Held-out data (same forms). Default: the built-in's test "
                                                    "split, or `eval_fraction` of user data.")
    eval_fraction: float = Field(0.05, gt=0, lt=1, description="Share of user records held out (by a hash "
                                                               "of their id) when eval_data is not set.")
    max_seq_len: int = Field(512, ge=16, description="Records longer than this (tokens) are quarantined.")
    max_records: int | None = Field(None, ge=1, description="Use at most this many training records.")
    ai_feedback: list[str] = Field(default_factory=list, description="`constitution` stages whose AI-feedback "
                                                                     "records (revisions for sft, preference "
                                                                     "pairs for reward/dpo) are added to `data`, "
                                                                     "train and held-out splits alike.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation, logging, checkpoints.")
    resources: Resources = Field(default_factory=Resources, description="Ray Train workers, GPUs, strategy.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters (needs `peft`) instead of all "
                                                      "weights; they are merged into the saved model.")

    @field_validator("data", "eval_data")
    @classmethod
    def _spec(cls, v):
        from llmray.data.formats import check_spec

        return None if v is None else check_spec(v, cls.USE)

    @model_validator(mode="after")
    def _one_start(self):
        if bool(self.init) == bool(self.from_):
            raise ValueError("set exactly one of init (a stage) and from (a local HF folder)")
        return self


class PrefConfig(PostTrainConfig):
    """Fields of the kinds that train on preference pairs (reward, dpo)."""

    USE: ClassVar[str] = "pref"

    data: str = Field("builtin:prefs", description="Preference pairs: `builtin:<name>` or JSONL files with "
                                                   "prompt/chosen/rejected (strings or message lists).")


def init_dir(config: PostTrainConfig, ctx) -> Path:
    """The HF folder training starts from."""
    return ctx.input("init").path("model") if config.init else Path(config.from_).expanduser()


def load_tokenizer(model_dir: Path):
    """The init model's tokenizer; its chat template must mark assistant turns for the loss mask."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    template = tok.chat_template or ""
    if "generation" not in template:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template with {{% generation %}} markers "
                         "(make it with the llmray tokenizer stage, or add one)")
    if tok.pad_token_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no pad token")
    return tok


# ---------------------------------------------------------------- driver: data


def held_out(record_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def load_splits(config: PostTrainConfig, use: str):
    """(train records, eval records, quarantined entries) for the configured data."""
    from llmray.data.formats import load_data

    train = load_data(config.data, use, "train")
    quarantined = list(train.quarantined)
    if config.eval_data:
        ev = load_data(config.eval_data, use, "test")
        quarantined += ev.quarantined
        train_recs, eval_recs = train.records, ev.records
    elif config.data.startswith("builtin:"):
        train_recs, eval_recs = train.records, load_data(config.data, use, "test").records
    else:
        train_recs = [r for r in train.records if not held_out(r["id"], config.eval_fraction)]
        eval_recs = [r for r in train.records if held_out(r["id"], config.eval_fraction)]
    if config.max_records:
        train_recs = train_recs[: config.max_records]
    return train_recs, eval_recs, quarantined


AI_FEEDBACK_FILES = {"pref": "prefs", "chat": "sft"}  # record use -> a constitution stage's output


def ai_feedback_records(ctx, use: str) -> tuple[list[dict], list[dict]]:
    """(train, held-out) records of the `ai_feedback:` constitution stages, in canonical form; preference
    pairs carry group `ai_feedback` so held-out accuracy on them is reported on its own."""
    import json

    train, held = [], []
    for out in ctx.inputs.get("ai_feedback", []):
        with out.path(AI_FEEDBACK_FILES[use]).open(encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                rec = ({"id": r["id"], "messages": r["messages"]} if use == "chat" else
                       {"id": r["id"], "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                        "group": "ai_feedback"})
                (held if r["split"] == "test" else train).append(rec)
    return train, held


def prepare(config: PostTrainConfig, ctx, use: str, encode) -> dict:
    """Records -> token rows -> parquet under work_dir/data. `encode(record) -> row dict`, whose
    `length` key is the longest sequence in the row. Returns counts and the split folders."""
    import random

    from llmray.data.formats import quarantine_entry, write_quarantine

    train_recs, eval_recs, quarantined = load_splits(config, use)
    ai_train, ai_eval = ai_feedback_records(ctx, use)
    train_recs, eval_recs = train_recs + ai_train, eval_recs + ai_eval
    out = {"quarantined": len(quarantined), "ai_feedback_train": len(ai_train), "ai_feedback_eval": len(ai_eval)}
    for split, recs in (("train", train_recs), ("val", eval_recs)):
        rows, too_long = [], []
        for rec in recs:
            row = encode(rec)
            if row.pop("length") > config.max_seq_len:
                too_long.append(quarantine_entry(rec["id"], None, f"longer than max_seq_len "
                                                                  f"({config.max_seq_len}) tokens", str(rec)))
            else:
                rows.append(row)
        if not rows:
            raise ValueError(f"no usable {split} records (check data / eval_data and the quarantine folder)")
        random.Random(config.train.seed).shuffle(rows)  # the loop keeps this order: shuffle once, here
        quarantined += too_long
        out[f"{split}_records"] = len(rows)
        out[f"{split}_dir"] = _write_rows(rows, Path(ctx.work_dir) / "data" / split)
    out["quarantined"] = len(quarantined)
    write_quarantine(quarantined, ctx.out_dir, "records")
    return out


def _write_rows(rows: list[dict], folder: Path) -> str:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, folder / "part-00000.parquet", row_group_size=1024)
    return str(folder)


def rows_dataset(folder: str):
    """Token rows written by `prepare` -> an in-memory Ray Dataset.

    Post-training sets are small next to pretraining shards, so the rows go straight into the
    object store: no read tasks that would each need a CPU while the Train workers hold every
    CPU of a 2-core machine (Ray Data's file listing reserves one and would wait forever)."""
    import pyarrow.parquet as pq
    import ray.data

    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet rows in {folder}")
    ds = ray.data.from_arrow([pq.read_table(f) for f in files])
    ds.context.enable_progress_bars = False  # bars drawn in the Train workers flood the driver's output
    return ds


# ---------------------------------------------------------------- workers: batches


def pad_batch(seqs, pad_id: int, masks=None) -> dict:
    """Variable-length id lists -> right-padded LongTensor, attention mask (and padded loss masks)."""
    import numpy as np
    import torch

    n, width = len(seqs), max(len(s) for s in seqs)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    att = np.zeros((n, width), dtype=np.int64)
    loss = np.zeros((n, width), dtype=np.int64) if masks is not None else None
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        att[i, : len(s)] = 1
        if loss is not None:
            loss[i, : len(s)] = masks[i]
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(att)}
    if loss is not None:
        out["loss_mask"] = torch.from_numpy(loss)
    return out


def eval_sums(model, batches: list[dict], fn, compute, rank: int, world: int) -> dict:
    """Sum `fn(batch) -> {name: scalar tensor}` over held-out batches split round-robin across
    ranks, all-reduced, with `model` in eval mode (its mode is restored after). Every rank runs
    the same number of forwards (zero-weight repeats)."""
    was_training = model.training
    model.eval()
    try:
        return _eval_sums(batches, fn, compute, rank, world)
    finally:
        model.train(was_training)


def _eval_sums(batches: list[dict], fn, compute, rank: int, world: int) -> dict:
    import math

    import torch

    from llmray.device import autocast
    from llmray.train.step import to_device
    from llmray.train.task import all_reduce_sum

    names, total = None, None
    for j in range(math.ceil(len(batches) / world)):
        idx = j * world + rank
        weight = 1.0 if idx < len(batches) else 0.0
        batch = to_device(batches[idx if weight else 0], compute.device)
        with torch.no_grad(), autocast(compute):
            sums = fn(batch)
        names = names or sorted(sums)
        vec = torch.stack([sums[k].detach().double() for k in names]) * weight
        total = vec if total is None else total + vec
    if total is None:
        return {}
    total = all_reduce_sum(total)
    return dict(zip(names, total.tolist()))


def pair_groups(config: PostTrainConfig) -> list[str]:
    """Names of the pair kinds held-out accuracy is reported by: those built-in preference data carries
    (none for user files), plus `ai_feedback` when constitution stages add pairs."""
    groups = []
    if config.data.startswith("builtin:"):
        from llmray.data.instruct import REJECTIONS

        groups = list(REJECTIONS)
    return groups + (["ai_feedback"] if config.ai_feedback else [])


def group_index(record: dict, groups: list[str]) -> int:
    return groups.index(record["group"]) if record.get("group") in groups else -1


def group_sums(correct, group, n_groups: int, name: str = "correct") -> dict:
    """Per-group sums of a 0/1 tensor (`<name>_<g>`, `pairs_<g>`), for eval_sums."""
    out = {}
    for g in range(n_groups):
        sel = (group == g).double()
        out[f"{name}_{g}"], out[f"pairs_{g}"] = (correct.double() * sel).sum(), sel.sum()
    return out


def group_means(sums: dict, groups: list[str], name: str = "correct") -> dict:
    """{group name: accuracy} from `group_sums` totals (groups with no pairs left out)."""
    return {label: sums[f"{name}_{g}"] / sums[f"pairs_{g}"] for g, label in enumerate(groups)
            if sums.get(f"pairs_{g}")}


def group_collate(batch: dict, n: int):
    """The `group` column of a numpy batch as a LongTensor (-1 when the data has none)."""
    import torch

    if "group" in batch:
        return torch.as_tensor(batch["group"], dtype=torch.long)
    return torch.full((n,), -1, dtype=torch.long)


# ---------------------------------------------------------------- models


def apply_lora(model, lora: LoraConfig | None, task_type: str):
    """Wrap `model` with PEFT LoRA adapters (only they train); identity when `lora` is None."""
    if lora is None:
        return model
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    cfg = PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                   target_modules=lora.target_modules, task_type=task_type)
    return get_peft_model(model, cfg)


def merge_lora(model):
    """A plain transformers model: LoRA adapters merged into the weights (no-op without PEFT)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def generate_samples(model_dir: Path, prompts: list[dict], max_new_tokens: int = 48) -> list[str]:
    """Greedy replies (on the driver, CPU is fine for a few prompts) to chat prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.chat import stop_token_ids

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    out = []
    for p in prompts:
        ids = tok.apply_chat_template(p["prompt"], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tok),
                                 pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return out
