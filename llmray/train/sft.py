"""The `sft` kind's training: chat rows on the shared Ray Train loop, loss on assistant tokens only.

Data flow (`train_sft`, called by `llmray.stages.sft.run`): `data:` (built-in `builtin:instruct`, or
chat / Alpaca JSONL; malformed records go to `quarantine/records.jsonl`) -> the init model's chat
template (`encode_chat_row`: `llmray.chat.encode_chat` token ids + assistant mask, 1 on every token
the assistant wrote incl. its end-of-turn) -> parquet rows in the work dir (`llmray.posttrain.prepare`)
-> `SftTask` on `llmray.train.loop.fit` (DDP/FSDP2, checkpoints, resume, metrics.jsonl). Each
micro-batch's rows are right-padded with an attention mask (`llmray.posttrain.pad_batch`) or, with
`packing: true`, packed whole into rows of up to max_seq_len tokens (`llmray.posttrain.pack_batch`:
position ids restart per sequence, no attention_mask, so transformers builds a block-diagonal causal
mask); the loss is the cross-entropy over assistant tokens (`llmray.losses.masked_ce`), the same
figure either way. The held-out assistant-token loss is measured before the first step (= the init
model) and after the last; greedy answers of the init and the tuned model to a few held-out prompts
go into the manifest (`metrics.samples`), the init model's written while the workers train.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmray.posttrain import PostTrainConfig
from llmray.stages.base import FixedCost, StageResult
from llmray.train.task import BaseTask


class SftTask(BaseTask):
    """Masked next-token loss on padded or packed chat rows (a `llmray.train.task.TrainTask`)."""

    def __init__(self, model_dir: Path, train_dir: str, val_dir: str, pad_id: int, lora=None,
                 packing: bool = False, max_seq_len: int = 512, decoding=None):
        self.model_dir, self.train_dir, self.val_dir = Path(model_dir), train_dir, val_dir
        self.pad_id, self.lora = pad_id, lora
        self.packing, self.max_seq_len = packing, max_seq_len
        self.decoding = decoding

    def datasets(self) -> dict:
        from llmray.posttrain import rows_dataset

        return {"train": rows_dataset(self.train_dir), "val": rows_dataset(self.val_dir)}

    def build_model(self):
        from transformers import AutoModelForCausalLM

        from llmray.posttrain import apply_lora

        model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), attn_implementation="sdpa")
        return apply_lora(model, self.lora, "CAUSAL_LM")

    def collate(self, batch: dict) -> dict:
        from llmray.posttrain import pack_batch, pad_batch

        ids, masks = list(batch["input_ids"]), list(batch["loss_mask"])
        if self.packing:
            return pack_batch(ids, self.pad_id, masks, self.max_seq_len)
        return pad_batch(ids, self.pad_id, masks)

    def loss(self, model, batch: dict):
        from llmray.losses import masked_ce

        if "position_ids" in batch:  # packed: no attention_mask, or transformers would not split the rows
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           use_cache=False).logits
            tokens = int((batch["sequence_index"] >= 0).sum())
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits
            tokens = int(batch["attention_mask"].sum())
        loss, n = masked_ce(logits, batch["input_ids"], batch["loss_mask"])
        return loss, {"tokens": tokens, "assistant_tokens": n}

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

        save_model(merge_lora(model), AutoTokenizer.from_pretrained(str(self.model_dir)), out_dir, self.model_dir,
                   self.decoding)


def encode_chat_row(tokenizer, record: dict) -> dict:
    """A canonical chat record -> {"input_ids", "loss_mask", "length"} via the chat template."""
    ids, mask = encode_chat_ids(tokenizer, record["messages"])
    return {"input_ids": ids, "loss_mask": mask, "length": len(ids)}


def encode_chat_ids(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    from llmray.chat import encode_chat

    ids, mask = encode_chat(tokenizer, messages)
    if not any(mask):
        raise ValueError("the conversation has no assistant tokens to train on (no assistant turn?)")
    return ids, mask


def train_sft(config: PostTrainConfig, ctx) -> StageResult:
    """The `sft` stage: prepare the chat rows, train on the Ray Train loop, report and sample."""
    from llmray.chat import pad_token_id
    from llmray.posttrain import init_dir, load_tokenizer, prepare
    from llmray.train.loop import fit

    cost = FixedCost()
    with cost.phase("startup"):  # the driver's part: the init model's folder and tokenizer
        start = init_dir(config, ctx)
        tok = load_tokenizer(start)
    with cost.phase("data"):
        data = prepare(config, ctx, "chat", lambda rec: encode_chat_row(tok, rec))
    ctx.log.info("sft data: %s", data)
    task = SftTask(start, data["train_dir"], data["val_dir"], pad_token_id(tok), config.lora,
                   packing=config.packing, max_seq_len=config.max_seq_len, decoding=config.decoding)
    # The init model's sample answers are written on the driver while the workers train (the driver only
    # waits there); the tuned model's after training. The init model is loaded before training starts:
    # transformers' model loading is not thread-safe (its meta-device initialisation is process-wide), and
    # in-process training (resources.in_process) loads its own model in this process.
    with ThreadPoolExecutor(1) as pool:
        with cost.phase("eval"):
            before = _init_samples(config, start, pool) if config.samples else None
        result = fit(task, config.train, config.resources, ctx, cost=cost)
        metrics = _summary(result.metrics, data)
        if before is not None:
            with cost.phase("eval"):  # the wait for the init model's answers, then the tuned model's
                metrics["samples"] = _samples(config, result.model_dir, before[0], before[1].result())
    metrics["fixed_cost"] = cost.metrics(work_s=result.work_s)
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


def _init_samples(config: PostTrainConfig, start: Path, pool) -> tuple[list[dict], object]:
    """The first few held-out prompts and a future of the init model's greedy answers to them (the model
    loaded here, the answers generated in `pool`)."""
    from llmray.generate import HFGenerator
    from llmray.posttrain import heldout_records

    prompts = heldout_records(config, "prompt", config.samples)
    generator = HFGenerator(start, batch_size=1)  # what posttrain.generate_samples uses
    return prompts, pool.submit(generator.answer, [p["prompt"] for p in prompts], config.max_new_tokens)


def _samples(config: PostTrainConfig, tuned: Path, prompts: list[dict], before: list[str]) -> list[dict]:
    """Greedy answers of the init (`before`) and the tuned model to the first few held-out prompts."""
    from llmray.posttrain import generate_samples

    after = generate_samples(tuned, prompts, config.max_new_tokens)
    return [{"prompt": p["prompt"][-1]["content"], "reference": p.get("reference"), "before": b, "after": a}
            for p, b, a in zip(prompts, before, after)]
