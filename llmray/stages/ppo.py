"""Stage kind `ppo`: RLHF with PPO on Ray (rollout engines, reward, reference, policy and critic actors).

Data flow: prompts (`builtin:prompts` or JSONL) -> the `init:` stage's model generates responses
on the rollout engines (vLLM, or transformers generate) -> the `reward:` stage's model scores
them; the frozen init model is the reference -> per-token reward = score at the last token
- beta * KL(policy || reference), beta adapted towards `kl.target` -> GAE with the critic
(started from the reward model) -> clipped PPO updates of policy and critic -> the new weights
go to the engines. Outputs `model/` (the final policy, HF format) and `metrics.jsonl` (one
record per iteration); the manifest compares the held-out reward of the init and final
policies and reports the final KL against its target. Implementation: `llmray.rlhf.driver`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmray.config import StrictModel
from llmray.rlhf.config import RLConfig

VERSION = "1"


class Critic(StrictModel):
    """The value model and the advantage estimate."""

    init: Literal["reward", "policy"] = Field("reward", description="Start the critic from the reward model "
                                                                   "(OpenRLHF's default) or from the policy with "
                                                                   "a fresh value head.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    value_clip: float | None = Field(0.2, gt=0, description="Clip value updates to this distance from the old "
                                                            "values (null: no clipping).")
    whiten_advantages: bool = Field(True, description="Normalise advantages over each iteration's tokens.")


class Config(RLConfig):
    """PPO: policy + critic, per-token KL penalty in the reward, adaptive KL coefficient."""

    kind: Literal["ppo"] = Field("ppo", description="Selects this stage kind.")
    critic: Critic = Field(default_factory=Critic, description="Critic and GAE settings.")
    missing_eos_penalty: float | None = Field(None, ge=0, description="Subtract this from the score of a response "
                                                                      "that hit max_new_tokens without a stop token.")


def run(config: Config, ctx):
    from llmray.rlhf.driver import run_rl

    return run_rl(config, ctx, "ppo")
