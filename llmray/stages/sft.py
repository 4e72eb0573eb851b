"""Stage kind `sft`: supervised instruction tuning on chat data, loss on assistant tokens only.

This module is the kind's Config and `run`; the work (chat rows with assistant masks, padded or
packed micro-batches, `SftTask` on the shared Ray Train loop, held-out loss and sample answers
before and after) is `llmray.train.sft.train_sft`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from llmray.config import EXTERNAL_INPUT, with_defaults
from llmray.data.instruct import DATA_VERSION
from llmray.posttrain import PostTrainConfig
from llmray.train.config import TrainConfig
from llmray.train.sft import train_sft

# built-in data sets are part of the output; 2: several workers deal rows (llmray.train.data.rank_shards)
VERSION = f"2+data{DATA_VERSION}"


SftTrain = with_defaults(TrainConfig, "SftTrain", __name__, lr=1e-4)


class Config(PostTrainConfig):
    """Instruction-tune a causal LM (`init:` a pretrain or sft stage) on chat data."""

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"init": ("pretrain", "sft"), "ai_feedback": ("constitution",)}

    kind: Literal["sft"] = Field("sft", description="Selects this stage kind.")
    data: str = Field("builtin:instruct", json_schema_extra=EXTERNAL_INPUT, description="Chat data: `builtin:<name>` or JSONL files of OpenAI "
                                                      "`messages`, Alpaca or prompt/completion records.")
    train: SftTrain = Field(default_factory=SftTrain, description="Optimisation, logging, checkpoints.")
    samples: int = Field(4, ge=0, description="Held-out prompts answered (greedy) in the manifest, "
                                              "by the init model and by the tuned one.")
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per sample answer.")
    packing: bool = Field(False, description="Concatenate the rows of each micro-batch into a few balanced rows "
                                             "of at most max_seq_len tokens instead of padding every row to the "
                                             "longest; positions restart and attention stays within each "
                                             "sequence, so the loss is the same up to float rounding while far "
                                             "less padding is computed.")


def run(config: Config, ctx):
    return train_sft(config, ctx)
