"""Stage kind `dpo`: Direct Preference Optimisation (and IPO, cDPO) against a frozen reference.

This module is the kind's Config and `run`; the work (pair rows with assistant masks, the policy and
a frozen reference per worker on the shared Ray Train loop, implicit-reward and log-prob accuracies
before and after) is `llmray.train.dpo.train_dpo`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from llmray.config import with_defaults
from llmray.data.instruct import DATA_VERSION
from llmray.posttrain import PrefConfig
from llmray.train.config import TrainConfig
from llmray.train.dpo import train_dpo

# built-in data sets are part of the output; 2: several workers deal rows (llmray.train.data.rank_shards)
VERSION = f"2+data{DATA_VERSION}"


DpoTrain = with_defaults(TrainConfig, "DpoTrain", __name__, lr=5e-6)


class Config(PrefConfig):
    """Align a causal LM (`init:` an sft stage, usually) to preference pairs with DPO."""

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"init": ("sft", "pretrain", "dpo"), "ai_feedback": ("constitution",)}

    kind: Literal["dpo"] = Field("dpo", description="Selects this stage kind.")
    beta: float = Field(0.1, gt=0, description="Strength of the KL tie to the reference (DPO beta).")
    loss_type: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO (Rafailov et al.); "
                                                                        "ipo: IPO (Azar et al.).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO: assumed share of flipped labels "
                                                                  "(sigmoid loss only).")
    train: DpoTrain = Field(default_factory=DpoTrain, description="Optimisation, logging, checkpoints.")

    @model_validator(mode="after")
    def _smoothing(self):
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError("label_smoothing (cDPO) applies to loss_type sigmoid only")
        return self


def run(config: Config, ctx):
    return train_dpo(config, ctx)
