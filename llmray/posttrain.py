"""What the post-training kinds (sft, reward, dpo) share: config fields, data preparation, batching.

Data flow on the driver (`prepare`), streamed: data spec (`builtin:<name>`, or files, folders,
`datasets` folders, globs, object-store URIs) --llmray.data.formats.split_records (one record at a
time; bad ones -> `<stage>/quarantine/records.jsonl`)--> train / held-out records --the stage's
`encode` (chat template of the init model's tokenizer, assistant mask)--> token rows, too-long ones
quarantined too --llmray.data.rows.ShuffledRows (seeded uniform shuffle in bounded memory)-->
parquet under `ctx.work_dir/data/{train,val}` (the task holds only these paths; Ray Data streams
them). The driver's memory does not grow with the data set.
On the workers: `pad_batch` turns a numpy batch of variable-length lists into right-padded
tensors plus an attention mask; `pack_batch` (sft `packing: true`) instead concatenates whole
sequences into rows of up to max_seq_len tokens, positions restarting per sequence. `eval_sums`
sums per-batch figures over the held-out batches and all ranks (equal forwards per rank, so
FSDP2's collectives line up).
After training, `generate_samples` writes greedy answers to a few held-out prompts.

The top level imports only pydantic and llmray config modules (stage modules import this).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmray.config import EXTERNAL_INPUT, StageConfig, StrictModel
from llmray.data.formats import check_fields, check_spec, held_out, split_records  # noqa: F401 (held_out: re-exported)
from llmray.generate import HFGenerator
from llmray.models import DecodingConfig, ModelSource, check_start, model_cache, resolve_model_source
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
    from_: ModelSource | None = Field(None, alias="from", json_schema_extra=EXTERNAL_INPUT,
                                      description="Hugging Face causal-LM folder to start from instead of a "
                                                  "stage: a local path, or an object-store URI downloaded once "
                                                  "into <run>/.models/.")
    data: str = Field(json_schema_extra=EXTERNAL_INPUT, description=(
        "Training data: `builtin:<name>`, or a file, folder or glob of JSON Lines (.jsonl, .jsonl.gz, "
        ".jsonl.zst), Parquet or Arrow files, or a Hugging Face `datasets` save_to_disk folder (a DatasetDict: "
        "its `train` split); local or an object-store URI (s3://bucket/path?endpoint_override=host:port&"
        "scheme=http for S3-compatible stores). Layouts: OpenAI messages, ShareGPT conversations, Alpaca, "
        "prompt/completion (others through `fields`)."))
    eval_data: str | None = Field(None, json_schema_extra=EXTERNAL_INPUT, description=(
        "Held-out data (same forms; a DatasetDict: its test/validation split). Default: the built-in's or "
        "DatasetDict's held-out split, else `eval_fraction` of `data`."))
    fields: dict[str, str] = Field(default_factory=dict, description=(
        "Field mapping for data in another layout, {canonical name: your field}, applied to data and eval_data "
        "alike, e.g. {prompt: question, completion: answer} or {messages: dialog}. Canonical names: "
        "id, messages, conversations, system, instruction, input, output, prompt, completion, chosen, "
        "rejected, reference, harmful."))
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
    decoding: DecodingConfig = Field(default_factory=DecodingConfig, description=(
        "Decoding defaults written into the saved model's generation_config.json (a served request that does "
        "not set them, the align stage's answers and later stages started from this model inherit them); unset "
        "fields keep the start folder's. A reward model does not generate: not allowed there."))

    @field_validator("data", "eval_data")
    @classmethod
    def _spec(cls, v):
        return None if v is None else check_spec(v, cls.USE)

    @field_validator("fields")
    @classmethod
    def _fields(cls, v):
        return check_fields(v)

    @model_validator(mode="after")
    def _one_start(self):
        check_start(self.init, self.from_)
        return self


class PrefConfig(PostTrainConfig):
    """Fields of the kinds that train on preference pairs (reward, dpo)."""

    USE: ClassVar[str] = "pref"

    data: str = Field("builtin:prefs", json_schema_extra=EXTERNAL_INPUT, description=(
        "Preference pairs: `builtin:<name>`, or files / folders / URIs as for sft's `data` with "
        "prompt/chosen/rejected (strings or message lists; others through `fields`)."))


def init_dir(config: PostTrainConfig, ctx) -> Path:
    """The HF folder training starts from: the `init:` stage's model/, or the checked `from:` folder
    (a URI downloaded into the run's model cache)."""
    if config.init:
        return ctx.input("init").path("model")
    return resolve_model_source(config.from_, model_cache(ctx.run_dir), f"stages.{ctx.name}.from")


def load_tokenizer(model_dir: Path):
    """The init model's tokenizer. Any chat template works (`llmray.chat.encode_chat` masks stock
    templates without {% generation %} markers too); a tokenizer without a pad token is batched with
    `llmray.chat.pad_token_id`'s fallback, nothing is added to it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if not tok.chat_template:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template (post-training renders "
                         "conversations with it; set `chat_template` in tokenizer_config.json or add "
                         "chat_template.jinja to the folder)")
    return tok


# ---------------------------------------------------------------- driver: data


def heldout_records(config: PostTrainConfig, use: str, n: int) -> list[dict]:
    """The first `n` held-out records of the configured data (reading stops once they are found)."""
    out: list[dict] = []
    if n <= 0:
        return out
    for split, rec in split_records(config.data, config.eval_data, use, config.eval_fraction, config.fields,
                                    lambda _entry: None, only_heldout=True):
        if split == "test":
            out.append(rec)
            if len(out) == n:
                break
    return out


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
    """Records -> token rows -> shuffled parquet under work_dir/data/{train,val}, streamed: the driver
    holds one record at a time plus `llmray.data.rows`' bounded shuffle buffer, never the data set.
    `encode(record) -> row dict`, whose `length` key is the longest sequence in the row. Bad and
    too-long records stream to `<stage>/quarantine/records.jsonl`. Returns counts and the split folders."""
    from llmray.data.formats import Quarantine, quarantine_entry
    from llmray.data.rows import ShuffledRows

    base = Path(ctx.work_dir) / "data"
    # The loop reads rows in file order: shuffle once, here, with the train seed.
    writers = {"train": ShuffledRows(base / "train", config.train.seed),
               "val": ShuffledRows(base / "val", config.train.seed)}
    with Quarantine(ctx.out_dir, "records") as bad:

        def add(split: str, rec: dict) -> None:
            row = encode(rec)
            if row.pop("length") > config.max_seq_len:
                bad(quarantine_entry(rec["id"], None, f"longer than max_seq_len ({config.max_seq_len}) tokens",
                                     str(rec)))
            else:
                writers[split].add(row)

        taken = 0
        for split, rec in split_records(config.data, config.eval_data, use, config.eval_fraction, config.fields,
                                        bad):
            if split == "train":
                if config.max_records and taken >= config.max_records:
                    continue
                taken += 1
            add("train" if split == "train" else "val", rec)
        ai_train, ai_eval = ai_feedback_records(ctx, use)
        for split, recs in (("train", ai_train), ("val", ai_eval)):
            for rec in recs:
                add(split, rec)
    out = {"quarantined": bad.count, "ai_feedback_train": len(ai_train), "ai_feedback_eval": len(ai_eval)}
    for split, writer in writers.items():
        out[f"{split}_records"] = writer.close()
        if not out[f"{split}_records"]:
            raise ValueError(f"no usable {split} records (check data / eval_data and the quarantine folder)")
        out[f"{split}_dir"] = str(writer.folder)
    return out


def rows_dataset(folder: str):
    """Token rows written by `prepare` -> a lazy Ray Dataset, one block per parquet part, read by
    tasks that reserve no CPU (`llmray.train.data.read_rows`: the Train workers may hold every CPU
    of a small machine), so the driver never holds the rows."""
    from llmray.train.data import read_rows

    return read_rows(folder)


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


def pack_batch(seqs, pad_id: int, masks, max_len: int) -> dict:
    """Variable-length id lists -> packed rows of whole sequences, each row at most `max_len` tokens.

    Rows come from `pack_rows` (a sequence never spans two rows). Returns LongTensors of shape
    [rows, W], W = the fullest packed row: `input_ids` (pad_id after the last sequence),
    `loss_mask` (0 on every sequence's first token, so the last token of one sequence is never
    trained to predict the next one's first; 0 on padding), `position_ids` (0 at every sequence
    start, and at the start of the padding tail) and `sequence_index` (which input row each token
    came from, -1 on padding).

    Isolation: pass `position_ids` and NO attention_mask to a transformers 5.x model. Its
    `masking_utils.find_packed_sequence_indices` then splits each row wherever the positions do not
    step by +1, and builds the block-diagonal causal mask for the attention backend in use (a 4D
    mask for sdpa/eager, varlen kernels for flash attention), so no token sees another sequence.
    """
    import numpy as np
    import torch

    lengths = [len(s) for s in seqs]
    rows = pack_rows(lengths, max_len)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    pos = np.zeros((len(rows), width), dtype=np.int64)
    loss = np.zeros((len(rows), width), dtype=np.int64)
    index = np.full((len(rows), width), -1, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = lengths[i]
            ids[r, at: at + n], pos[r, at: at + n], index[r, at: at + n] = seqs[i], np.arange(n), i
            loss[r, at: at + n] = masks[i]
            loss[r, at] = 0
            at += n
        pos[r, at:] = np.arange(width - at)  # the padding tail is a segment of its own
    return {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(pos),
            "loss_mask": torch.from_numpy(loss), "sequence_index": torch.from_numpy(index)}


def pack_rows(lengths: list[int], max_len: int) -> list[list[int]]:
    """Which sequences (indices into `lengths`) share each packed row: the packing with the fewest
    positions (rows x fullest row) among greedy balanced ones, each row at most `max_len` tokens.

    For a row count R from the fewest that could hold the tokens: longest sequence first, each into
    the emptiest of R rows (LPT scheduling), infeasible if it would overflow max_len there. Balanced
    rows matter as much as full ones: a batch is as wide as its fullest row, so first-fit into rows of
    max_len leaves the last row mostly padding. R = len(lengths) is one sequence per row, so this is
    never wider than padding; the search stops once R x longest cannot beat the best found.
    """
    if max(lengths) > max_len:
        raise ValueError(f"pack_batch: a sequence of {max(lengths)} tokens exceeds max_len {max_len}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    longest, best, best_cost = lengths[order[0]], None, None
    for n_rows in range(-(-sum(lengths) // max_len), len(lengths) + 1):
        if best_cost is not None and n_rows * longest >= best_cost:
            break
        rows, fill = [[] for _ in range(n_rows)], [0] * n_rows
        for i in order:
            r = min(range(n_rows), key=fill.__getitem__)
            if fill[r] + lengths[i] > max_len:
                break
            rows[r].append(i)
            fill[r] += lengths[i]
        else:
            if best_cost is None or n_rows * max(fill) < best_cost:
                best, best_cost = rows, n_rows * max(fill)
    return best


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
    """Greedy replies (on the driver, CPU is fine for a few prompts) to chat prompts, one at a time, through
    the generation layer's batch engine (the folder's chat template and generation config)."""
    return HFGenerator(model_dir, batch_size=1).answer([p["prompt"] for p in prompts], max_new_tokens)
