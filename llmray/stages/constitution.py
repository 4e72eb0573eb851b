"""Stage kind `constitution`: Constitutional AI — AI feedback from written principles (Bai et al., 2022).

This module is the kind's Config (principles, sampling, engine, judge, confidence rules) and `run`;
the work is `llmray.safety.constitution.run_constitution`: the policy answers the prompts (built-in:
the red-team prompts' TRAIN split, never the align stage's held-out suite), the feedback model
critiques and revises (SL-CAI) and compares answers from its log-probabilities (RL-CAI / RLAIF), and
on a held-out calibration set with known answers, all in one Ray task given this typed Config ->
data/prefs.jsonl, data/sft.jsonl, trace.jsonl, calibration.jsonl.
`sft`, `reward` and `dpo` stages add these records to their data with `ai_feedback: [<this stage>]`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmray.config import EXTERNAL_INPUT, StageConfig, StrictModel, with_defaults
from llmray.data.formats import check_fields, check_spec
from llmray.models import ModelSource, check_start
from llmray.resources import TaskResources
from llmray.safety.constitution import PRINCIPLES, run_constitution

VERSION = "1"
POLICY_KINDS = ("sft", "pretrain", "dpo", "ppo", "grpo")


class Principle(StrictModel):
    """One principle of the constitution: the three requests the feedback model is given."""

    name: str = Field(description="Short label, reported per pair.")
    critique: str = Field(description="Critique request: what to look for in a response.")
    revision: str = Field(description="Revision request: how to rewrite the response.")
    comparison: str = Field(description="Comparison question put before options (A) and (B) (pairwise judge).")
    assessment: str = Field(description="Yes/no question about one response (pointwise judge).")


class Sampling(StrictModel):
    """Sampling settings (stop tokens: the chat template's end of turn and end of text)."""

    max_new_tokens: int = Field(48, ge=1, description="Longest generated text, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")


# Critiques and revisions are longer than answers, and a cooler temperature keeps them on task.
FeedbackSampling = with_defaults(Sampling, "FeedbackSampling", __name__, max_new_tokens=64, temperature=0.7)
FeedbackResources = with_defaults(TaskResources, "FeedbackResources", __name__, num_cpus=1)


class Engine(StrictModel):
    """The generation engine inside the stage's Ray task (llmray.rlhf.rollout's engines)."""

    engine: Literal["auto", "vllm", "hf"] = Field("auto", description="vllm: vLLM `LLM`; hf: transformers "
                                                                      "generate; auto: vllm when installed.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="vLLM weights dtype "
                                                                                         "(auto: fp32 on CPU, "
                                                                                         "bf16 on GPU).")
    enforce_eager: bool = Field(True, description="vLLM: no CUDA graphs / compilation (fast start).")
    kv_cache_gb: float = Field(1.0, gt=0, description="vLLM on CPU: KV cache size in GiB.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM on GPU: share of its memory.")
    max_model_len: int = Field(1024, ge=64, description="Longest prompt + generation; prompts keep their end.")
    hf_batch_size: int = Field(64, ge=1, description="transformers engine: prompts per generate call.")


def _builtin_principles() -> list[Principle]:
    return [Principle(**p) for p in PRINCIPLES]


class Config(StageConfig):
    """Generate AI-feedback SFT revisions and preference pairs from a constitution of principles."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)
    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"init": POLICY_KINDS, "feedback": POLICY_KINDS}

    kind: Literal["constitution"] = Field("constitution", description="Selects this stage kind.")
    init: str | None = Field(None, description="Stage whose model (the policy) answers the prompts.")
    from_: ModelSource | None = Field(None, alias="from", json_schema_extra=EXTERNAL_INPUT,
                                      description="Hugging Face causal-LM folder of the policy instead of a "
                                                  "stage (a local path, or an object-store URI downloaded once "
                                                  "into <run>/.models/).")
    feedback: str | None = Field(None, description="Stage whose model critiques, revises and compares "
                                                   "(default: the policy itself, as in the paper).")
    feedback_from: ModelSource | None = Field(None, json_schema_extra=EXTERNAL_INPUT,
                                              description="Hugging Face causal-LM folder (local path or "
                                                          "object-store URI) of the feedback model instead "
                                                          "(e.g. a larger instruct model on a cluster).")
    prompts: str = Field("builtin:redteam", json_schema_extra=EXTERNAL_INPUT, description=(
        "Prompts: `builtin:<name>` (its train split), or files / folders / `datasets` folders / URIs of prompts "
        "or chats, as for ppo's `prompts`."))
    fields: dict[str, str] = Field(default_factory=dict, description=(
        "Field mapping for prompts in another layout, {canonical name: your field}, e.g. {prompt: question}."))
    max_prompts: int | None = Field(128, ge=1, description="Use at most this many prompts (an even spread).")
    principles: list[Principle] = Field(default_factory=_builtin_principles, min_length=1,
                                        description="The constitution (default: llmray's harmlessness "
                                                    "principles). Each prompt / pair draws one by a hash.")
    samples: int = Field(2, ge=2, le=8, description="Policy answers per prompt; sample 0 is compared with each "
                                                    "other one.")
    revise: bool = Field(True, description="Critique and revise sample 0 (SL-CAI) and compare the revision "
                                           "with it.")
    generation: Sampling = Field(default_factory=Sampling, description="The policy's sampling.")
    feedback_generation: FeedbackSampling = Field(default_factory=FeedbackSampling,
                                          description="The feedback model's sampling for critiques/revisions.")
    engine: Engine = Field(default_factory=Engine, description="Generation engine.")
    judge: Literal["pairwise", "pointwise"] = Field(
        "pairwise", description="pairwise: the paper's multiple-choice comparison, asked in both orders; pointwise: "
                                "a yes/no verdict per response, compared by log-odds (no position bias; what "
                                "small feedback models manage).")
    judge_batch_size: int = Field(16, ge=1, description="Sequences per forward pass when comparing.")
    calibration_pairs: int = Field(128, ge=0, description="Held-out comparisons with known answers to measure "
                                                         "the feedback model on (0: none).")
    min_calibration: float | None = Field(None, ge=0, le=1, description="Fail the stage (no output is "
                                                                        "marked complete) when the feedback "
                                                                        "model's calibration agreement is below "
                                                                        "this: labels near chance are noise.")
    min_confidence: float = Field(0.0, ge=0, lt=0.5, description="Drop pairs whose |p - 0.5| is below this.")
    require_consistent: bool = Field(False, description="Drop pairs whose two orders disagree.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of prompts (by a hash of the id) whose "
                                                              "records go to the held-out split.")
    resources: FeedbackResources = Field(default_factory=FeedbackResources,
                                     description="What the feedback task reserves.")
    seed: int = Field(0, description="Sampling seed.")

    @field_validator("prompts")
    @classmethod
    def _spec(cls, v):
        return check_spec(v, "prompt")

    @field_validator("fields")
    @classmethod
    def _fields(cls, v):
        return check_fields(v)

    @model_validator(mode="after")
    def _check(self):
        if self.min_calibration is not None and not self.calibration_pairs:
            raise ValueError("min_calibration needs calibration_pairs > 0 (nothing to measure the feedback model on)")
        check_start(self.init, self.from_)
        if self.feedback and self.feedback_from:
            raise ValueError("set at most one of feedback (a stage) and feedback_from (a HF folder or URI)")
        if self.require_consistent and self.judge != "pairwise":
            raise ValueError("require_consistent needs judge: pairwise (a pointwise verdict has no order to agree on)")
        names = [p.name for p in self.principles]
        if len(set(names)) != len(names):
            raise ValueError(f"principles: names must be unique, got {names}")
        return self


def run(config: Config, ctx):
    return run_constitution(config, ctx)
