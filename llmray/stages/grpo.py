"""Stage kind `grpo`: RLHF with GRPO on Ray (no critic; group-relative advantages).

Data flow: each prompt is answered `group_size` times by the rollout engines (vLLM, or
transformers generate) from the starting model (`init:` stage or `from:` folder) -> `reward:`
scores every answer (reward-model stages, Python functions `module:function` in reward worker
actors, or a weighted sum; e.g. `llmray.rlhf.rewards:exact_match` on `builtin:arithmetic`) ->
advantage of an answer = (its score - its group's mean) / the group's std, the same for all its
tokens -> clipped policy updates with beta * KL_k3(policy || reference) in the loss, beta adapted
towards `kl.target` -> the new weights go to the engines. Outputs `model/` and
`metrics.jsonl`; the manifest compares held-out reward of the init and final policies (with
function rewards also per term and as an exact-match rate with its Wilson interval) and the
final KL against its target. Implementation: `llmray.rlhf.driver` (shared with `ppo`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmray.config import with_defaults
from llmray.data.instruct import DATA_VERSION
from llmray.data.verifiable import VERSION as ARITHMETIC_VERSION
from llmray.rlhf.config import KL, RLConfig

# 2: programmable rewards, `from:`. Built-in prompt sets (builtin:prompts, builtin:arithmetic) are part
# of the output, so their versions are too.
VERSION = f"2+data{DATA_VERSION}+arith{ARITHMETIC_VERSION}"


# GRPO puts the KL in the loss with the non-negative k3 estimator (DeepSeekMath), at a smaller beta.
GrpoKL = with_defaults(KL, "GrpoKL", __name__, coef=0.1, estimator="k3")


class Config(RLConfig):
    """GRPO: sampled groups per prompt, group-normalised rewards, KL to the reference in the loss."""

    kind: Literal["grpo"] = Field("grpo", description="Selects this stage kind.")
    group_size: int = Field(4, ge=2, description="Responses sampled per prompt (the group).")
    scale_rewards: bool = Field(True, description="Divide each group's centred scores by the group's std "
                                                  "(false: Dr. GRPO's unscaled advantages).")
    batch_size: int = Field(8, ge=1, description="Prompts per iteration (each answered group_size times).")
    kl: GrpoKL = Field(default_factory=GrpoKL,
                   description="KL penalty to the reference model (a loss term in GRPO).")
    missing_eos_penalty: float | None = Field(None, ge=0, description="Subtract this from the score of a response "
                                                                      "that hit max_new_tokens without a stop token.")

    def samples_per_iteration(self) -> int:
        return self.batch_size * self.group_size


def run(config: Config, ctx):
    from llmray.rlhf.driver import run_rl

    return run_rl(config, ctx, "grpo")
