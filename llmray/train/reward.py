"""The `reward` kind's training: a Bradley-Terry reward model on preference pairs.

Data flow (`train_reward`, called by `llmray.stages.reward.run`): `data:` (built-in `builtin:prefs`,
or prompt/chosen/rejected JSONL in string or message-list form; malformed records quarantined) ->
prompt + chosen reply and prompt + rejected reply through the init model's chat template
(`encode_pair_rows`; `pair_rows` and `heldout_metrics` are shared with dpo) -> parquet rows -> `RewardTask`
on the shared Ray Train loop.
The model is the architecture's `*ForSequenceClassification` with one label, built from the init
folder (`build_reward_model`): a causal LM's backbone weights load into the classifier (its LM head
is dropped, the score head starts fresh from the seed); the score is read at each row's last real
token by the attention mask (`llmray.losses.last_token_scores`), whatever the pad id. Each
micro-batch scores chosen and rejected rows in one forward; loss = mean -log sigmoid(r_chosen -
r_rejected). Metrics: held-out preference accuracy and mean reward margin, before the first step
and after the last.
"""

from __future__ import annotations

from pathlib import Path

from llmray.posttrain import PrefConfig
from llmray.stages.base import FixedCost, StageResult
from llmray.train.task import BaseTask


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


def pair_rows(config: PrefConfig, ctx, cost: FixedCost, with_masks: bool = False) -> tuple[Path, int, list[str], dict]:
    """The driver's part shared by reward and dpo: the init model's folder and pad id, the pair kinds
    reported per group, and the pair rows written as parquet (`llmray.posttrain.prepare`)."""
    from llmray.chat import pad_token_id
    from llmray.posttrain import init_dir, load_tokenizer, pair_groups, prepare

    with cost.phase("startup"):  # the driver's part: the init model's folder and tokenizer
        start = init_dir(config, ctx)
        tok = load_tokenizer(start)
    groups = pair_groups(config)
    with cost.phase("data"):
        data = prepare(config, ctx, "pref", lambda rec: encode_pair_rows(tok, rec, with_masks, groups))
    ctx.log.info("%s data: %s", config.kind, data)
    return start, pad_token_id(tok), groups, data


def heldout_metrics(final: dict, data: dict, keys: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """The stage metrics from the loop's final record and the data counts, with `heldout_<key>` (after
    the last step) and `heldout_<key>_before` (before the first) for each key; and the first and last
    evaluations themselves."""
    first, last = final.get("first_eval", {}), final.get("final_eval", {})
    metrics = {k: v for k, v in final.items() if k not in ("first_eval", "final_eval")}
    metrics.update({k: v for k, v in data.items() if not k.endswith("_dir")})
    for key in keys:
        if f"val_{key}" in last:
            metrics[f"heldout_{key}_before"] = first.get(f"val_{key}")
            metrics[f"heldout_{key}"] = last[f"val_{key}"]
    metrics["heldout_pairs"] = last.get("val_pairs")
    return metrics, first, last


def train_reward(config: PrefConfig, ctx) -> StageResult:
    """The `reward` stage: prepare the pair rows, train on the Ray Train loop, report held-out figures."""
    from llmray.train.loop import fit

    cost = FixedCost()
    start, pad_id, groups, data = pair_rows(config, ctx, cost)
    task = RewardTask(start, data["train_dir"], data["val_dir"], pad_id, config.lora, groups)
    result = fit(task, config.train, config.resources, ctx, cost=cost)
    metrics, _, last = heldout_metrics(result.metrics, data, ("accuracy", "margin", "loss"))
    metrics["heldout_accuracy_by_kind"] = {g: last[f"val_accuracy_{g}"] for g in groups if f"val_accuracy_{g}" in last}
    metrics["fixed_cost"] = cost.metrics(work_s=result.work_s)
    ctx.log.info("reward: held-out accuracy %s, margin %s", metrics.get("heldout_accuracy"),
                 metrics.get("heldout_margin"))
    return StageResult(metrics=metrics, outputs={"model": "model"})
