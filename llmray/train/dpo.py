"""The `dpo` kind's training: Direct Preference Optimisation (and IPO, cDPO) against a frozen reference.

Data flow (`train_dpo`, called by `llmray.stages.dpo.run`): `data:` preference pairs (as for
`reward`) -> prompt + chosen and prompt + rejected through the init model's chat template, with
assistant masks (`llmray.train.reward.encode_pair_rows`) -> parquet rows -> `DpoTask` on
the shared Ray Train loop. The policy starts from the `init:` model; the reference is a frozen
copy of the same model, loaded once per worker and run under no_grad alongside the policy on
each micro-batch (chosen and rejected rows in one forward each). Sequence log-probs sum the
reply tokens only (mean per token for `ipo`); `llmray.losses.dpo_loss` gives the per-example
loss and the implicit rewards beta * (log pi - log pi_ref).

Metrics (train and held-out): loss, implicit-reward accuracy (chosen reward > rejected reward),
chosen/rejected rewards, margin, and the log-prob accuracy (log pi(chosen) > log pi(rejected)).
At step 0 the policy IS the init model, so `heldout_logp_accuracy_before` is the init (SFT)
model's own preference accuracy, the figure DPO is compared against.
"""

from __future__ import annotations

from pathlib import Path

from llmray.posttrain import PrefConfig
from llmray.stages.base import FixedCost, StageResult
from llmray.train.reward import heldout_metrics, pair_rows
from llmray.train.task import BaseTask


class DpoTask(BaseTask):
    """DPO loss with a per-worker frozen reference (a `llmray.train.task.TrainTask`)."""

    def __init__(self, model_dir: Path, train_dir: str, val_dir: str, pad_id: int, beta: float,
                 loss_type: str, label_smoothing: float, lora=None, groups: list[str] = (), decoding=None):
        self.model_dir, self.train_dir, self.val_dir = Path(model_dir), train_dir, val_dir
        self.pad_id, self.beta, self.loss_type, self.label_smoothing = pad_id, beta, loss_type, label_smoothing
        self.lora, self.groups, self.decoding = lora, list(groups), decoding
        self._ref = None  # built lazily on the worker, on the batch's device
        # Held-out reference log-probs per batch index: the reference is frozen and the held-out batches
        # are the same at every evaluation, so its forward runs once per batch, not once per evaluation.
        self._ref_eval: dict[int, tuple] = {}
        self._evaluated = False

    def __getstate__(self):
        # never ship a model (or worker-side caches) to the workers
        return {**self.__dict__, "_ref": None, "_ref_eval": {}, "_evaluated": False}

    def datasets(self) -> dict:
        from llmray.posttrain import rows_dataset

        return {"train": rows_dataset(self.train_dir), "val": rows_dataset(self.val_dir)}

    def build_model(self):
        from transformers import AutoModelForCausalLM

        from llmray.posttrain import apply_lora

        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), attn_implementation="sdpa")
        return apply_lora(model, self.lora, "CAUSAL_LM")

    def reference(self, device):
        if self._ref is None:
            from transformers import AutoModelForCausalLM

            ref = AutoModelForCausalLM.from_pretrained(str(self.model_dir), attn_implementation="sdpa")
            self._ref = ref.to(device).eval().requires_grad_(False)
        return self._ref

    def collate(self, batch: dict) -> dict:
        """Chosen rows first, then rejected rows, padded together, with the reply masks."""
        from llmray.posttrain import group_collate, pad_batch

        seqs = list(batch["chosen_ids"]) + list(batch["rejected_ids"])
        masks = list(batch["chosen_mask"]) + list(batch["rejected_mask"])
        return {**pad_batch(seqs, self.pad_id, masks), "group": group_collate(batch, len(batch["chosen_ids"]))}

    def logps(self, model, batch: dict):
        """(chosen, rejected) sequence log-probs of the reply tokens under `model`."""
        from llmray.losses import sequence_logps

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
        lp = sequence_logps(logits, batch["input_ids"], batch["loss_mask"], average=self.loss_type == "ipo")
        n = lp.shape[0] // 2
        return lp[:n], lp[n:]

    def pair_stats(self, model, batch: dict, ref=None, policy_is_ref: bool = False):
        """Per-pair losses, implicit rewards and policy log-probs for one batch. `ref`: the reference's
        (chosen, rejected) log-probs when already known; `policy_is_ref`: the policy's weights equal the
        reference's, so its log-probs are the reference's (one forward, not two)."""
        import torch

        from llmray.losses import dpo_loss

        if ref is None:
            with torch.no_grad():
                ref = self.logps(self.reference(batch["input_ids"].device), batch)
        rc, rr = ref
        pc, pr = (rc, rr) if policy_is_ref else self.logps(model, batch)
        losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, self.beta, self.loss_type, self.label_smoothing)
        return losses, chosen_r, rejected_r, pc.detach(), pr.detach()

    def _eval_ref(self, batch: dict):
        """The reference's log-probs of a held-out batch, computed at its first evaluation only."""
        key = int(batch["eval_index"])
        if key not in self._ref_eval:
            import torch

            with torch.no_grad():
                self._ref_eval[key] = self.logps(self.reference(batch["input_ids"].device), batch)
        return self._ref_eval[key]

    def _policy_is_ref(self, model) -> bool:
        """True when the policy is a plain (or DDP-wrapped) copy of the reference: same class, config,
        dtypes and weights, not compiled, so both forwards give the same numbers. Checked at the first
        evaluation (the init model, unless the run resumed); LoRA, FSDP2 and compiled models never match."""
        import torch

        from llmray.train.checkpoint import unwrap

        plain = unwrap(model)
        ref = self.reference(next(plain.parameters()).device)
        if (type(plain) is not type(ref) or getattr(plain, "_compiled_call_impl", None) is not None
                or plain.config.to_dict() != ref.config.to_dict()):
            return False
        mine, theirs = plain.state_dict(), ref.state_dict()
        return mine.keys() == theirs.keys() and all(
            type(a) is torch.Tensor and type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a, b) for a, b in ((mine[k], theirs[k]) for k in mine))

    def loss(self, model, batch: dict):
        losses, cr, rr, pc, pr = self.pair_stats(model, batch)
        return losses.mean(), {
            "tokens": int(batch["attention_mask"].sum()), "reward_accuracy": (cr > rr).float().mean(),
            "chosen_reward": cr.mean(), "rejected_reward": rr.mean(), "margin": (cr - rr).mean(),
            "logp_accuracy": (pc > pr).float().mean()}

    def evaluate(self, model, val_sets: dict, compute, rank: int, world: int) -> dict:
        """Held-out means over all evaluated pairs (ties in reward count as wrong)."""
        import torch

        from llmray.posttrain import eval_sums, group_sums

        n_groups = len(self.groups)
        batches = val_sets.get("val", [])
        for i, b in enumerate(batches):  # the batch's key in the reference cache
            b.setdefault("eval_index", torch.tensor(i))
        same = not self._evaluated and self._policy_is_ref(model)
        self._evaluated = True

        def sums(batch):
            losses, cr, rr, pc, pr = self.pair_stats(model, batch, self._eval_ref(batch), policy_is_ref=same)
            return {"loss": losses.sum(), "reward_accuracy": (cr > rr).sum().double(),
                    "chosen_reward": cr.sum(), "rejected_reward": rr.sum(), "margin": (cr - rr).sum(),
                    "logp_accuracy": (pc > pr).sum().double(),
                    "pairs": torch.tensor(float(cr.shape[0]), device=cr.device),
                    **group_sums(cr > rr, batch["group"], n_groups, "reward"),
                    **group_sums(pc > pr, batch["group"], n_groups, "logp")}

        s = eval_sums(model, batches, sums, compute, rank, world)
        if not s:
            return {}
        from llmray.posttrain import group_means

        per_group = {f"val_reward_accuracy_{k}": v for k, v in group_means(s, self.groups, "reward").items()}
        per_group.update({f"val_logp_accuracy_{k}": v for k, v in group_means(s, self.groups, "logp").items()})
        n = max(s.pop("pairs"), 1.0)
        totals = {k: v / n for k, v in s.items() if not k.startswith(("reward_", "logp_", "pairs_"))
                  or k in ("reward_accuracy", "logp_accuracy")}
        return {**{f"val_{k}": v for k, v in totals.items()}, "val_pairs": n, **per_group}

    def save(self, model, out_dir: Path) -> None:
        from transformers import AutoTokenizer

        from llmray.models import save_model
        from llmray.posttrain import merge_lora

        save_model(merge_lora(model), AutoTokenizer.from_pretrained(str(self.model_dir)), out_dir, self.model_dir,
                   self.decoding)


def train_dpo(config: PrefConfig, ctx) -> StageResult:
    """The `dpo` stage: prepare the pair rows, train against the frozen reference, report held-out figures."""
    from llmray.train.loop import fit

    cost = FixedCost()
    start, pad_id, groups, data = pair_rows(config, ctx, cost, with_masks=True)
    task = DpoTask(start, data["train_dir"], data["val_dir"], pad_id, config.beta, config.loss_type,
                   config.label_smoothing, config.lora, groups, config.decoding)
    result = fit(task, config.train, config.resources, ctx, cost=cost)
    metrics, first, last = heldout_metrics(result.metrics, data, ("loss", "reward_accuracy", "chosen_reward",
                                                                  "rejected_reward", "margin", "logp_accuracy"))
    # The init model's preference accuracy: its own log-prob ranking (its implicit reward is 0).
    metrics["init_heldout_accuracy"] = first.get("val_logp_accuracy")
    metrics["heldout_reward_accuracy_by_kind"] = {g: last[f"val_reward_accuracy_{g}"] for g in groups
                                                  if f"val_reward_accuracy_{g}" in last}
    metrics["init_heldout_accuracy_by_kind"] = {g: first[f"val_logp_accuracy_{g}"] for g in groups
                                                if f"val_logp_accuracy_{g}" in first}
    metrics["fixed_cost"] = cost.metrics(work_s=result.work_s)
    ctx.log.info("dpo: held-out implicit-reward accuracy %s (init model's log-prob accuracy %s)",
                 metrics.get("heldout_reward_accuracy"), metrics["init_heldout_accuracy"])
    return StageResult(metrics=metrics, outputs={"model": "model"})
