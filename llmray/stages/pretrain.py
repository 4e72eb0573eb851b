"""Stage kind `pretrain`: next-token prediction on token shards with Ray Train; also domain fine-tuning.

From scratch:   data (tokenize stage) + model preset -> `model/` (HF, safetensors + tokenizer).
Domain tuning:  the same kind with `init:` (a pretrain or sft stage whose `model/` is loaded),
                domain `data:`, and `replay: {data: <general tokenize stage>, fraction}` mixing
                that share of general micro-batches in; metrics then report the domain and the
                general validation loss before and after (`forgetting` = general loss increase).
`from:` continues pretraining a Hugging Face causal LM instead (a local folder or an object-store
URI, resolved and checked by llmray.models.resolve_model_source); keep `model:` for from scratch.

Data flow: tokenize outputs `train/`, `val/`, `tokenizer/` -> llmray.train.causal.CausalLMTask
-> llmray.train.loop.fit (Ray Train: DDP/FSDP2, checkpoints under ctx.work_dir, resume) ->
`model/`, `metrics.jsonl` (a record every `train.log_every` steps) and final figures, including
the unigram entropy of the train tokens (the loss to beat) in `metrics`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from llmray.config import EXTERNAL_INPUT, StageConfig, StrictModel
from llmray.models import ModelConfig, ModelSource, check_start, model_cache, resolve_model_source
from llmray.resources import Resources
from llmray.train.config import TrainConfig

# 2: with several workers each step holds distinct rows (llmray.train.data.rank_shards)
# 3: `shuffle` (default on): the train rows in a new seeded order every epoch
VERSION = "3"


class Replay(StrictModel):
    """General data mixed into domain fine-tuning, against catastrophic forgetting."""

    data: str = Field(description="tokenize stage of general data: its train/ is replayed, its val/ is the "
                                  "general validation set (forgetting is measured on it).")
    fraction: float = Field(0.25, ge=0, lt=1, description="Share of micro-batches drawn from the general data "
                                                          "(0: only measure forgetting).")


class Config(StageConfig):
    """Pretrain a causal LM from scratch, or continue training one (`init:` / `from:`) on domain data."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)
    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "data": ("tokenize",), "init": ("pretrain", "sft"), "replay": ("tokenize",)}

    kind: Literal["pretrain"] = Field("pretrain", description="Selects this stage kind.")
    data: str = Field(description="tokenize stage whose train/ and val/ token shards are trained on.")
    init: str | None = Field(None, description="pretrain or sft stage whose model/ is the starting point "
                                               "(domain fine-tuning).")
    from_: ModelSource | None = Field(None, alias="from", json_schema_extra=EXTERNAL_INPUT,
                                      description="Hugging Face causal-LM folder to continue pretraining "
                                                  "(a local path, or an object-store URI downloaded once into "
                                                  "<run>/.models/); the data must be tokenized with its "
                                                  "tokenizer.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture when training from "
                                                                        "scratch (not with init/from).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation, logging, checkpoints.")
    resources: Resources = Field(default_factory=Resources, description="Ray Train workers, GPUs, strategy.")
    replay: Replay | None = Field(None, description="General data replayed during domain fine-tuning.")
    shuffle: bool = Field(True, description="Read the train rows (and the replayed rows) in a new order "
                                            "every data epoch, seeded by train.seed: the shard files in a "
                                            "random order, each file's rows permuted. False: the shards' "
                                            "order, which for tokenized text is the corpus's document order.")

    def input_refs(self) -> dict[str, list[str]]:
        refs = super().input_refs()
        refs.pop("replay", None)
        if self.replay is not None:
            refs["replay"] = [self.replay.data]
        return refs

    @model_validator(mode="after")
    def _check(self):
        check_start(self.init, self.from_, required=False)
        if (self.init or self.from_) and "model" in self.model_fields_set:
            raise ValueError("model describes a model trained from scratch; remove it when using init/from")
        return self


def run(config: Config, ctx):
    from llmray.stages.base import FixedCost, StageResult
    from llmray.train.causal import CausalLMTask, check_vocab, unigram_entropy
    from llmray.train.data import rows_needed
    from llmray.train.loop import fit

    cost = FixedCost()
    data = ctx.input("data")
    with cost.phase("startup"):  # the driver's part: the starting model's folder, its vocabulary checked
        hf_dir = _start_dir(config, ctx)
        if hf_dir is not None:
            check_vocab(data.path("tokenizer"), hf_dir)
    replay = ctx.input("replay") if config.replay else None
    task = CausalLMTask(
        train_dir=data.path("train"), val_dir=data.path("val"), tokenizer_dir=data.path("tokenizer"),
        model=None if hf_dir else config.model.model_dump(), hf_dir=hf_dir,
        replay_train_dir=replay.path("train") if replay else None,
        replay_val_dir=replay.path("val") if replay else None,
        replay_fraction=config.replay.fraction if config.replay else 0.0, data_cpus=config.train.data_cpus,
        min_rows=rows_needed(config.train, config.resources.num_workers),
        shuffle_seed=config.train.seed if config.shuffle else None)
    with cost.phase("data"):
        baseline = unigram_entropy(data.path("train"))
    ctx.log.info("unigram entropy of the train tokens: %.4f nats", baseline["unigram_entropy"])
    ctx.metrics_writer().write({"event": "data", **baseline})
    result = fit(task, config.train, config.resources, ctx, cost=cost)
    metrics = _summary(result.metrics, baseline)
    metrics["fixed_cost"] = cost.metrics(work_s=result.work_s)
    ctx.log.info("pretrain: %s", metrics)
    return StageResult(metrics=metrics, outputs={"model": "model"})


def _start_dir(config: Config, ctx):
    """The model training continues from (None: from scratch): the `init:` stage's model/, or the
    checked `from:` folder (a URI downloaded into the run's model cache)."""
    if config.init:
        return ctx.input("init").path("model")
    if config.from_:
        return resolve_model_source(config.from_, model_cache(ctx.run_dir), f"stages.{ctx.name}.from")
    return None


def _summary(final: dict, baseline: dict) -> dict:
    """Flat manifest metrics: final figures, the before/after evaluations, forgetting."""
    first, last = final.get("first_eval", {}), final.get("final_eval", {})
    out = {k: v for k, v in final.items() if k not in ("first_eval", "final_eval")}
    out.update(baseline)
    out.update({f"{k}_before": v for k, v in first.items() if k.endswith("_loss")})
    out.update({f"{k}_after": v for k, v in last.items() if k.endswith("_loss")})
    if "val_loss" in last:
        out["val_loss"] = last["val_loss"]
        out["beats_unigram_by"] = baseline["unigram_entropy"] - last["val_loss"]
    if "val_general_loss" in first and "val_general_loss" in last:
        out["forgetting"] = last["val_general_loss"] - first["val_general_loss"]
    return out
