"""Stage kind `sft`: supervised instruction tuning on chat data, loss on assistant tokens only.

Data flow: `data:` (built-in `builtin:instruct`, or chat / Alpaca JSONL; malformed records
go to `quarantine/records.jsonl`) -> the init model's chat template (`llmray.chat.encode_chat`:
token ids + assistant mask, 1 on every token the assistant wrote incl. its end-of-turn) ->
parquet rows in the work dir -> `SftTask` on the shared Ray Train loop (`llmray.train.loop.fit`:
DDP/FSDP2, checkpoints, resume, metrics.jsonl). Batches are right-padded with an attention mask
(positions count from 0 in every row, so padding never shifts them); the loss is the
cross-entropy over assistant tokens only (`llmray.losses.masked_ce`).
The held-out assistant-token loss is measured before the first step (= the init model) and
after the last; greedy answers of the init and the tuned model to a few held-out prompts go
into the manifest (`metrics.samples`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from llmray.data.instruct import DATA_VERSION
from llmray.posttrain import PostTrainConfig
from llmray.train.config import TrainConfig
from llmray.train.task import BaseTask

VERSION = f"1+data{DATA_VERSION}"  # built-in data sets are part of the output


class Config(PostTrainConfig):
    """Instruction-tune a causal LM (`init:` a pretrain or sft stage) on chat data."""

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"init": ("pretrain", "sft"), "ai_feedback": ("constitution",)}

    kind: Literal["sft"] = Field("sft", description="Selects this stage kind.")
    data: str = Field("builtin:instruct", description="Chat data: `builtin:<name>` or JSONL files of OpenAI "
                                                      "`messages`, Alpaca or prompt/completion records.")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=1e-4, warmup_steps=10),
                               description="Optimisation, logging, checkpoints.")
    samples: int = Field(4, ge=0, description="Held-out prompts answered (greedy) in the manifest, "
                                              "by the init model and by the tuned one.")
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per sample answer.")


class SftTask(BaseTask):
    """Masked next-token loss on padded chat rows (a `llmray.train.task.TrainTask`)."""

    def __init__(self, model_dir: Path, train_dir: str, val_dir: str, pad_id: int, lora=None):
        self.model_dir, self.train_dir, self.val_dir = Path(model_dir), train_dir, val_dir
        self.pad_id, self.lora = pad_id, lora

    def datasets(self) -> dict:
        from llmray.posttrain import rows_dataset

        return {"train": rows_dataset(self.train_dir), "val": rows_dataset(self.val_dir)}

    def build_model(self):
        from transformers import AutoModelForCausalLM

        from llmray.posttrain import apply_lora

        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), attn_implementation="sdpa")
        return apply_lora(model, self.lora, "CAUSAL_LM")

    def collate(self, batch: dict) -> dict:
        from llmray.posttrain import pad_batch

        return pad_batch(list(batch["input_ids"]), self.pad_id, list(batch["loss_mask"]))

    def loss(self, model, batch: dict):
        from llmray.losses import masked_ce

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
        loss, n = masked_ce(logits, batch["input_ids"], batch["loss_mask"])
        return loss, {"tokens": int(batch["attention_mask"].sum()), "assistant_tokens": n}

    def evaluate(self, model, val_sets: dict, compute, rank: int, world: int) -> dict:
        """Held-out loss per assistant token (token-weighted over all evaluated batches)."""
        import math

        from llmray.posttrain import eval_sums

        def sums(batch):
            loss, n = self.loss(model, batch)[0], batch["loss_mask"][:, 1:].sum()
            return {"loss_sum": loss * n, "tokens": n}

        s = eval_sums(model, val_sets.get("val", []), sums, compute, rank, world)
        if not s:
            return {}
        loss = s["loss_sum"] / max(s["tokens"], 1.0)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": s["tokens"]}

    def save(self, model, out_dir: Path) -> None:
        from transformers import AutoTokenizer

        from llmray.models import save_model
        from llmray.posttrain import merge_lora

        save_model(merge_lora(model), AutoTokenizer.from_pretrained(str(self.model_dir)), out_dir)


def encode_chat_row(tokenizer, record: dict) -> dict:
    """A canonical chat record -> {"input_ids", "loss_mask", "length"} via the chat template."""
    ids, mask = encode_chat_ids(tokenizer, record["messages"])
    return {"input_ids": ids, "loss_mask": mask, "length": len(ids)}


def encode_chat_ids(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    from llmray.chat import encode_chat

    ids, mask = encode_chat(tokenizer, messages)
    if not any(mask):
        raise ValueError("the chat template marked no assistant tokens (no {% generation %} block?)")
    return ids, mask


def run(config: Config, ctx):
    from llmray.posttrain import init_dir, load_tokenizer, prepare
    from llmray.stages.base import StageResult
    from llmray.train.loop import fit

    start = init_dir(config, ctx)
    tok = load_tokenizer(start)
    data = prepare(config, ctx, "chat", lambda rec: encode_chat_row(tok, rec))
    ctx.log.info("sft data: %s", data)
    task = SftTask(start, data["train_dir"], data["val_dir"], tok.pad_token_id, config.lora)
    result = fit(task, config.train, config.resources, ctx)
    metrics = _summary(result.metrics, data)
    if config.samples:
        metrics["samples"] = _samples(config, start, result.model_dir)
    ctx.log.info("sft: held-out loss %.4f -> %.4f", metrics.get("heldout_loss_before", float("nan")),
                 metrics.get("heldout_loss_after", float("nan")))
    return StageResult(metrics=metrics, outputs={"model": "model"})


def _summary(final: dict, data: dict) -> dict:
    first, last = final.get("first_eval", {}), final.get("final_eval", {})
    out = {k: v for k, v in final.items() if k not in ("first_eval", "final_eval")}
    out.update({k: v for k, v in data.items() if not k.endswith("_dir")})
    if "val_loss" in first and "val_loss" in last:
        out["heldout_loss_before"], out["heldout_loss_after"] = first["val_loss"], last["val_loss"]
        out["heldout_loss_drop"] = first["val_loss"] - last["val_loss"]
        out["heldout_tokens"] = last.get("val_tokens")
    return out


def _samples(config: Config, start: Path, tuned: Path) -> list[dict]:
    """Greedy answers of the init and the tuned model to the first few held-out prompts."""
    from llmray.posttrain import generate_samples, load_splits

    _, eval_recs, _ = load_splits(config, "prompt")
    prompts = eval_recs[: config.samples]
    before = generate_samples(start, prompts, config.max_new_tokens)
    after = generate_samples(tuned, prompts, config.max_new_tokens)
    return [{"prompt": p["prompt"][-1]["content"], "reference": p.get("reference"), "before": b, "after": a}
            for p, b, a in zip(prompts, before, after)]
