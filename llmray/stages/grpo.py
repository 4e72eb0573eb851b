"""Stage kind `grpo`: RLHF with GRPO on Ray (no critic; group-relative advantages).

Data flow: each prompt is answered `group_size` times by the rollout engines (vLLM, or
transformers generate) -> the `reward:` stage's model scores every answer -> advantage of an
answer = (its score - its group's mean) / the group's std, the same for all its tokens ->
clipped policy updates with beta * KL_k3(policy || reference) in the loss, beta adapted
towards `kl.target` -> the new weights go to the engines. Outputs `model/` and
`metrics.jsonl`; the manifest compares held-out reward of the init and final policies and the
final KL against its target. Implementation: `llmray.rlhf.driver` (shared with `ppo`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmray.rlhf.config import KL, RLConfig

VERSION = "1"


class Config(RLConfig):
    """GRPO: sampled groups per prompt, group-normalised rewards, KL to the reference in the loss."""

    kind: Literal["grpo"] = Field("grpo", description="Selects this stage kind.")
    group_size: int = Field(4, ge=2, description="Responses sampled per prompt (the group).")
    scale_rewards: bool = Field(True, description="Divide each group's centred scores by the group's std "
                                                  "(false: Dr. GRPO's unscaled advantages).")
    batch_size: int = Field(8, ge=1, description="Prompts per iteration (each answered group_size times).")
    kl: KL = Field(default_factory=lambda: KL(coef=0.1, estimator="k3"),
                   description="KL penalty to the reference model (a loss term in GRPO).")
    missing_eos_penalty: float | None = Field(None, ge=0, description="Subtract this from the score of a response "
                                                                      "that hit max_new_tokens without a stop token.")

    def samples_per_iteration(self) -> int:
        return self.batch_size * self.group_size


def run(config: Config, ctx):
    from llmray.rlhf.driver import run_rl

    return run_rl(config, ctx, "grpo")
