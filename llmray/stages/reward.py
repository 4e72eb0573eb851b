"""Stage kind `reward`: a Bradley-Terry reward model on preference pairs.

Data flow: `data:` (built-in `builtin:prefs`, or prompt/chosen/rejected JSONL in string or
message-list form; malformed records quarantined) -> prompt + chosen reply and prompt +
rejected reply through the init model's chat template -> parquet rows -> `RewardTask` on the
shared Ray Train loop. The model is the architecture's `*ForSequenceClassification` with one label,
built from the init folder: a causal LM's backbone weights load into the classifier (its LM head
is dropped, the score head starts fresh from the seed); the score is read at each row's last real
token by the attention mask (`llmray.losses.last_token_scores`), whatever the pad id. Each micro-batch scores chosen and rejected rows in one
forward; loss = mean -log sigmoid(r_chosen - r_rejected). Metrics: held-out preference accuracy
and mean reward margin, before the first step and after the last.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from llmray.config import with_defaults
from llmray.data.instruct import DATA_VERSION
from llmray.posttrain import PrefConfig
from llmray.train.config import TrainConfig
from llmray.train.task import BaseTask

VERSION = f"1+data{DATA_VERSION}"  # built-in data sets are part of the output


RewardTrain = with_defaults(TrainConfig, "RewardTrain", __name__, lr=5e-5)


class Config(PrefConfig):
    """Train a reward model (`init:` an sft, pretrain or reward stage) on preference pairs."""

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"init": ("sft", "pretrain", "reward"), "ai_feedback": ("constitution",)}

    kind: Literal["reward"] = Field("reward", description="Selects this stage kind.")
    train: RewardTrain = Field(default_factory=RewardTrain, description="Optimisation, logging, checkpoints.")

    @field_validator("decoding")
    @classmethod
    def _no_decoding(cls, v):
        if v.model_dump(exclude_none=True):
            raise ValueError("a reward model scores text and does not generate: remove `decoding`")
        return v


def encode_pair_rows(tokenizer, record: dict, with_masks: bool = False, groups: list[str] = ()) -> dict:
    """A canonical preference record -> chosen/rejected token ids (and assistant masks), and the
    index of its kind in `groups` (-1: none)."""
    from llmray.chat import encode_chat
    from llmray.posttrain import group_index

    row, length = {"group": group_index(record, list(groups))}, 0
    for side in ("chosen", "rejected"):
        ids, mask = encode_chat(tokenizer, record["prompt"] + [{"role": "assistant", "content": record[side]}])
        if not any(mask):
            raise ValueError(f"the {side} reply has no assistant tokens in the chat template's rendering")
        row[f"{side}_ids"] = ids
        if with_masks:
            row[f"{side}_mask"] = mask
        length = max(length, len(ids))
    row["length"] = length
    return row


class RewardTask(BaseTask):
    """Bradley-Terry loss on (chosen, rejected) rows (a `llmray.train.task.TrainTask`)."""

    def __init__(self, model_dir: Path, train_dir: str, val_dir: str, pad_id: int, lora=None,
                 groups: list[str] = ()):
        self.model_dir, self.train_dir, self.val_dir = Path(model_dir), train_dir, val_dir
        self.pad_id, self.lora, self.groups = pad_id, lora, list(groups)

    def datasets(self) -> dict:
        from llmray.posttrain import rows_dataset

        return {"train": rows_dataset(self.train_dir), "val": rows_dataset(self.val_dir)}

    def build_model(self):
        return build_reward_model(self.model_dir, self.pad_id, self.lora)

    def collate(self, batch: dict) -> dict:
        """Chosen rows first, then rejected rows, padded together: one forward scores both."""
        from llmray.posttrain import group_collate, pad_batch

        chosen, rejected = list(batch["chosen_ids"]), list(batch["rejected_ids"])
        return {**pad_batch(chosen + rejected, self.pad_id), "group": group_collate(batch, len(chosen))}

    def scores(self, model, batch: dict):
        from llmray.losses import last_token_scores

        r = last_token_scores(model, batch["input_ids"], batch["attention_mask"])
        n = r.shape[0] // 2
        return r[:n], r[n:]

    def loss(self, model, batch: dict):
        from llmray.losses import bradley_terry_loss

        rc, rr = self.scores(model, batch)
        return bradley_terry_loss(rc, rr).mean(), {
            "tokens": int(batch["attention_mask"].sum()), "accuracy": (rc > rr).float().mean(),
            "margin": (rc - rr).detach().mean()}

    def evaluate(self, model, val_sets: dict, compute, rank: int, world: int) -> dict:
        """Held-out preference accuracy (ties count as wrong), mean margin and loss, over all pairs."""
        import torch

        from llmray.losses import bradley_terry_loss
        from llmray.posttrain import eval_sums, group_means, group_sums

        def sums(batch):
            rc, rr = self.scores(model, batch)
            return {"correct": (rc > rr).sum().double(), "margin": (rc - rr).sum().double(),
                    "loss": bradley_terry_loss(rc, rr).sum().double(),
                    "pairs": torch.tensor(float(rc.shape[0]), device=rc.device),
                    **group_sums(rc > rr, batch["group"], len(self.groups))}

        s = eval_sums(model, val_sets.get("val", []), sums, compute, rank, world)
        if not s:
            return {}
        n = max(s["pairs"], 1.0)
        out = {"val_accuracy": s["correct"] / n, "val_margin": s["margin"] / n, "val_loss": s["loss"] / n,
               "val_pairs": s["pairs"]}
        out.update({f"val_accuracy_{k}": v for k, v in group_means(s, self.groups).items()})
        return out

    def save(self, model, out_dir: Path) -> None:
        from transformers import AutoTokenizer

        from llmray.models import save_model
        from llmray.posttrain import merge_lora

        save_model(merge_lora(model), AutoTokenizer.from_pretrained(str(self.model_dir)), out_dir, self.model_dir)


def build_reward_model(model_dir: Path, pad_id: int, lora=None):
    """A 1-label *ForSequenceClassification from a causal LM or reward model folder."""
    import logging

    from transformers import AutoModelForSequenceClassification

    from llmray.posttrain import apply_lora

    # Loading a causal checkpoint reports the dropped lm_head and the new score head: expected here.
    tlog = logging.getLogger("transformers.modeling_utils")
    level = tlog.level
    tlog.setLevel(logging.ERROR)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=1, pad_token_id=pad_id, attn_implementation="sdpa")
    finally:
        tlog.setLevel(level)
    model.config.pad_token_id = pad_id
    return apply_lora(model, lora, "SEQ_CLS")


def run(config: Config, ctx):
    from llmray.chat import pad_token_id
    from llmray.posttrain import init_dir, load_tokenizer, pair_groups, prepare
    from llmray.stages.base import FixedCost, StageResult
    from llmray.train.loop import fit

    cost = FixedCost()
    with cost.phase("startup"):  # the driver's part: the init model's folder and tokenizer
        start = init_dir(config, ctx)
        tok = load_tokenizer(start)
    groups = pair_groups(config)
    with cost.phase("data"):
        data = prepare(config, ctx, "pref", lambda rec: encode_pair_rows(tok, rec, groups=groups))
    ctx.log.info("reward data: %s", data)
    task = RewardTask(start, data["train_dir"], data["val_dir"], pad_token_id(tok), config.lora, groups)
    result = fit(task, config.train, config.resources, ctx, cost=cost)
    first, last = result.metrics.get("first_eval", {}), result.metrics.get("final_eval", {})
    metrics = {k: v for k, v in result.metrics.items() if k not in ("first_eval", "final_eval")}
    metrics.update({k: v for k, v in data.items() if not k.endswith("_dir")})
    for key in ("accuracy", "margin", "loss"):
        if f"val_{key}" in last:
            metrics[f"heldout_{key}_before"] = first.get(f"val_{key}")
            metrics[f"heldout_{key}"] = last[f"val_{key}"]
    metrics["heldout_pairs"] = last.get("val_pairs")
    metrics["heldout_accuracy_by_kind"] = {g: last[f"val_accuracy_{g}"] for g in groups if f"val_accuracy_{g}" in last}
    metrics["fixed_cost"] = cost.metrics(work_s=result.work_s)
    ctx.log.info("reward: held-out accuracy %s, margin %s", metrics.get("heldout_accuracy"),
                 metrics.get("heldout_margin"))
    return StageResult(metrics=metrics, outputs={"model": "model"})
