"""Stage kind `ppo`: RLHF with PPO on Ray (rollout engines, reward, reference, policy and critic actors).

Data flow: prompts (`builtin:prompts`, `builtin:arithmetic` or user files) -> the starting model
(the `init:` stage's, or a `from:` folder) generates responses on the rollout engines (vLLM, or
transformers generate) -> `reward:` scores them: reward-model stages, Python functions
`module:function` run in reward worker actors (failures counted, not fatal up to
`max_reward_error_rate`), or a weighted sum of both; the frozen starting model is the reference
-> per-token reward = score at the last token - beta * KL(policy || reference), beta adapted
towards `kl.target` -> GAE with the critic (started from the first reward model, or the policy)
-> clipped PPO updates of policy and critic -> the new weights go to the engines. Outputs
`model/` (the final policy, HF format) and `metrics.jsonl` (one record per iteration); the
manifest compares the held-out reward of the init and final policies (with function rewards,
per term and as an exact-match rate with its Wilson interval) and reports the final KL against
its target. Implementation: `llmray.rlhf.driver`, rewards `llmray.rlhf.scoring`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmray.config import StrictModel
from llmray.data.instruct import DATA_VERSION
from llmray.data.verifiable import VERSION as ARITHMETIC_VERSION
from llmray.rlhf.config import RLConfig

# 2: programmable rewards, `from:`. Built-in prompt sets (builtin:prompts, builtin:arithmetic) are part
# of the output, so their versions are too.
VERSION = f"2+data{DATA_VERSION}+arith{ARITHMETIC_VERSION}"


class Critic(StrictModel):
    """The value model and the advantage estimate."""

    init: Literal["reward", "policy"] = Field("reward", description="Start the critic from the reward model "
                                                                   "(OpenRLHF's default; the first reward stage "
                                                                   "of `reward:`) or from the policy with a fresh "
                                                                   "value head. With only function rewards the "
                                                                   "default falls to policy.")
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

    @model_validator(mode="after")
    def _critic_source(self):
        explicit = "init" in self.critic.model_fields_set
        if explicit and self.critic.init == "reward" and not any(t.stage for t in self.reward_terms()):
            raise ValueError("critic.init: reward needs a reward-model stage in `reward:`; with function rewards "
                             "only, set critic.init: policy")
        return self


def run(config: Config, ctx):
    from llmray.rlhf.driver import run_rl

    return run_rl(config, ctx, "ppo")
