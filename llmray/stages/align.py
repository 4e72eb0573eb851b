"""Stage kind `align`: red-team evaluation of stage models, a trained output guardrail, a safety gate.

This module is the kind's Config (suites, guardrail, generation, answers, gate blocks) and `run`; the
work (suite, one Ray generation task per model, the guardrail trained meanwhile, rule and guardrail
judges, answer quality, the gate per model) is `llmray.safety.align.run_align`. The serve app reads
the gate with `llmray.safety.gate.gate_status` and screens every response with
`llmray.safety.guardrail.load_guardrail(<this stage>/guardrail)`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmray.config import EXTERNAL_INPUT, StageConfig, StrictModel
from llmray.models import ModelSource, check_model_set
from llmray.safety.align import run_align
from llmray.safety.gate import DEFAULT_LIMITS
from llmray.safety.guardrail import DEFAULT_THRESHOLD

VERSION = "3"  # 3: two-line gate, harm/unseen figures with intervals, answer quality; 2: everyday questions
MODEL_KINDS = ("pretrain", "sft", "dpo", "ppo", "grpo")


class SuiteFile(StrictModel):
    """A user red-team suite: one JSON object per line."""

    path: str = Field(description="JSONL file (relative paths are read from the working directory).",
                      json_schema_extra=EXTERNAL_INPUT)
    prompt_field: str = Field("prompt", description="Field holding the prompt: a string, or a list of "
                                                    "{role, content} messages ending with a user turn.")
    category_field: str | None = Field("category", description="Field naming the prompt's category "
                                                               "(e.g. harmful, jailbreak, injection, benign).")
    harmful_field: str | None = Field("harmful", description="Boolean field: is the request harmful? When a "
                                                             "line lacks it, category `benign` means no, any "
                                                             "other category yes.")
    id_field: str | None = Field("id", description="Field with a prompt id (default: the line number).")
    category: str | None = Field(None, description="Category for lines without one.")
    harmful: bool | None = Field(None, description="Harmful flag for lines without one.")


class GuardrailConfig(StrictModel):
    """The guardrail classifier trained by this stage."""

    dim_bits: int = Field(18, ge=10, le=24, description="Hashed feature space of 2**dim_bits weights.")
    word_ngrams: int = Field(2, ge=1, le=3, description="Word n-grams of orders 1..word_ngrams.")
    char_ngrams: list[int] = Field([4], description="Character n-gram orders (empty: none).")
    refusal_feature: bool = Field(True, description="Give the response head the rule judge's is-a-refusal "
                                                    "verdict as a feature (without it, refusal words inside "
                                                    "a non-refusal fool it more often).")
    steps: int = Field(400, ge=1, le=100_000, description="Full-batch Adam steps.")
    lr: float = Field(0.1, gt=0, description="Adam learning rate.")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on the weights.")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, lt=1, description="Flag when P(unsafe) >= threshold "
                                                                       "(see llmray.safety.guardrail).")
    refusal_text: str | None = Field(None, description="What replaces a flagged response (default: the first "
                                                       "refusal of llmray.data.instruct). Must read as a "
                                                       "refusal to the rule judge.")
    seed: int = Field(0, description="Seed of the response sampling in the labelled pairs.")

    @field_validator("char_ngrams")
    @classmethod
    def _orders(cls, v: list[int]) -> list[int]:
        bad = [n for n in v if not 2 <= n <= 8]
        if bad:
            raise ValueError(f"character n-gram orders must be within 2..8 (got {bad})")
        return v

    @field_validator("refusal_text")
    @classmethod
    def _refusal(cls, v: str | None) -> str | None:
        from llmray.data.instruct import is_refusal

        if v is not None and not is_refusal(v):
            raise ValueError("refusal_text must read as a refusal (e.g. start with \"I can't help with that\"), "
                             "or guarded over-refusal and unsafe figures would disagree with the rule judge")
        return v


class Generation(StrictModel):
    """How responses are generated (greedy, transformers, one Ray task per model)."""

    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens generated per response.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")
    cpus_per_model: float = Field(0.5, gt=0, description="Ray CPUs per model task; fractions let several "
                                                         "models evaluate in parallel on a small machine.")
    gpus_per_model: float = Field(0, ge=0, description="Ray GPUs per model task (fractions colocate models).")


class Answers(StrictModel):
    """Answer quality per model on held-out "what does this function do" questions (llmray.safety.answers)."""

    n: int = Field(64, ge=0, le=10_000, description="Questions (held-out instruct test split, chosen by a hash "
                                                    "of their id, the same for every model); 0 skips the set.")
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Tokens generated per answer.")
    examples: int = Field(3, ge=0, le=20, description="Example answers per model in metrics.answers.")


_LIMIT = "Unset (null): not checked."


class Gate(StrictModel):
    """Thresholds a model must meet to be served, on two lines: the model alone (unguarded figures) and,
    as the second line, with this stage's guardrail in front (as `llmray serve` runs it)."""

    max_unsafe_rate: float | None = Field(
        DEFAULT_LIMITS["max_unsafe_rate"], ge=0, le=1,
        description=f"Highest unsafe-response rate of the model alone on harmful prompts. {_LIMIT}")
    max_over_refusal: float | None = Field(
        DEFAULT_LIMITS["max_over_refusal"], ge=0, le=1,
        description=f"Highest refusal rate of the model alone on benign prompts. {_LIMIT}")
    max_unsafe_rate_guarded: float | None = Field(
        DEFAULT_LIMITS["max_unsafe_rate_guarded"], ge=0, le=1,
        description=f"Highest unsafe rate with the guardrail in front. {_LIMIT}")
    max_over_refusal_guarded: float | None = Field(
        DEFAULT_LIMITS["max_over_refusal_guarded"], ge=0, le=1,
        description=f"Highest refusal rate on benign prompts with the guardrail in front. {_LIMIT}")
    max_category_unsafe_rate: float | None = Field(None, ge=0, le=1, description="Highest unsafe rate in any one "
                                                                                 "technique category (unguarded; "
                                                                                 "guarded when `guarded`).")
    unseen: bool = Field(False, description="Also hold the unseen harm category (held out of all training) to "
                                            "the unsafe thresholds; by default it is reported, not gated.")
    guarded: bool = Field(False, description="Judge ONLY the guarded line (the `_guarded` thresholds): the "
                                             "model alone is not checked, and `llmray serve` needs the "
                                             "guardrail. Any guarded threshold makes serve need it too.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.guarded:
            # A default or null value is allowed (a resolved file carries the defaults); another value
            # would be silently ignored, which is what this refuses.
            ignored = [k for k in ("max_unsafe_rate", "max_over_refusal")
                       if getattr(self, k) not in (None, DEFAULT_LIMITS[k])]
            if ignored:
                raise ValueError(f"gate.guarded: true checks only the guarded line, so {', '.join(ignored)} (the "
                                 "model alone) would be ignored: remove it, or set guarded: false, or use "
                                 "max_unsafe_rate_guarded / max_over_refusal_guarded")
            if self.max_unsafe_rate_guarded is None and self.max_over_refusal_guarded is None:
                raise ValueError("gate.guarded: true with max_unsafe_rate_guarded and max_over_refusal_guarded "
                                 "both null checks nothing: set one, or set guarded: false")
        return self


class Config(StageConfig):
    """Red-team the named stage models, train the output guardrail, and gate deployment."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)
    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"models": MODEL_KINDS}

    kind: Literal["align"] = Field("align", description="Selects this stage kind.")
    models: list[str] = Field(default_factory=list, description="Stages (pretrain, sft, dpo, ppo, grpo) whose "
                                                                "model/ is evaluated, e.g. [base, chat, dpo, ppo].")
    model_dirs: dict[str, ModelSource] = Field(
        default_factory=dict, alias="from", json_schema_extra=EXTERNAL_INPUT,
        description="External models by label -> Hugging Face causal-LM folder (a local path, or an object-store "
                    "URI downloaded once into <run>/.models/); its content is fingerprinted. Also accepted under "
                    "its former name `model_dirs`. Serve one with the same name (`serve.models: [{name: <label>, "
                    "from: ...}]`) and this stage's gate applies to it.")
    builtin_suite: bool = Field(True, description="Include the built-in suite (held-out instruct intents).")
    suites: list[SuiteFile] = Field(default_factory=list, description="User JSONL red-team suites (their "
                                                                      "content is fingerprinted: editing one "
                                                                      "reruns the stage).")
    max_per_group: int | None = Field(None, ge=1, description="Keep at most this many prompts per category "
                                                              "(benign mirrors kept alongside).")
    judge: Literal["rule", "guardrail", "either"] = Field(
        "either", description="Headline unsafe judge: rule (not a refusal), guardrail (flagged), or either. "
                              "Both judges are always reported.")
    samples_per_model: int = Field(4, ge=0, le=50, description="Sample responses per model in metrics.samples.")
    guardrail: GuardrailConfig = Field(default_factory=GuardrailConfig, description="The guardrail classifier.")
    generation: Generation = Field(default_factory=Generation, description="Response generation.")
    answers: Answers = Field(default_factory=Answers, description="Answer quality per model on held-out "
                                                                  "questions (word F1, distinct-2, degenerate "
                                                                  "answers).")
    gate: Gate = Field(default_factory=Gate, description="Deployment thresholds.")

    @model_validator(mode="after")
    def _check(self):
        check_model_set(self.models, self.model_dirs)
        if not self.builtin_suite and not self.suites:
            raise ValueError("no prompts: keep builtin_suite or add `suites`")
        return self


def run(config: Config, ctx):
    return run_align(config, ctx)
