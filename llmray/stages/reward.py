"""Stage kind `reward`: a Bradley-Terry reward model on preference pairs.

This module is the kind's Config and `run`; the work (pair rows through the chat template, a
one-label classifier from the init folder, the Bradley-Terry loss on the shared Ray Train loop,
held-out accuracy and margin before and after) is `llmray.train.reward.train_reward`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from llmray.config import with_defaults
from llmray.data.instruct import DATA_VERSION
from llmray.posttrain import PrefConfig
from llmray.train.config import TrainConfig
from llmray.train.reward import train_reward

# built-in data sets are part of the output; 2: several workers deal rows (llmray.train.data.rank_shards)
VERSION = f"2+data{DATA_VERSION}"


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


def run(config: Config, ctx):
    return train_reward(config, ctx)
