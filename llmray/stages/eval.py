"""Stage kind `eval`: stage models (and external `from:` models) on lm-eval tasks, in one table.

Data flow: `tasks:` (lm-eval task/group/tag names, task YAML files or folders; default the built-in
offline `llmray` tasks, made from the held-out stdlib split) + `models:` / `from:` folders
--one Ray task per model with `resources:`, lm-eval's HFLM or VLLM + simple_evaluate-->
results/<model>/results.json (lm-eval's format), table.csv, table.md, metrics.table/scores.
Implementation: llmray.eval (harness: task resolution and the per-model run; tables; stage: the run).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from llmray.config import EXECUTION_ONLY, EXTERNAL_INPUT, StageConfig, StrictModel, with_defaults
from llmray.eval.harness import task_digests
from llmray.models import ModelSource, check_model_set
from llmray.resources import ActorResources

# Each model is one Ray task doing forward passes the whole time: a whole CPU by default.
EvalResources = with_defaults(ActorResources, "EvalResources", __name__, num_cpus=1)

# 1: first version. The built-in tasks' data is part of the output: bump when llmray/eval/tasks changes.
VERSION = "1+tasks1"
MODEL_KINDS = ("pretrain", "sft", "dpo", "ppo", "grpo")


class Contamination(StrictModel):
    """Per task, how many items share word n-grams with the curated corpora upstream of the models."""

    enabled: bool = Field(True, description="Check the tasks' documents against every curate stage the "
                                            "evaluated stage models descend from (external models: none).")
    ngram: int = Field(13, ge=3, le=50, description="Word n-gram length of a match (13: the GPT-3 paper's).")
    max_docs: int | None = Field(None, ge=1, json_schema_extra=EXECUTION_ONLY,
                                 description="Read at most this many corpus documents per curate stage "
                                             "(None: all).")


class EvalGate(StrictModel):
    """Capability thresholds; a model that misses one is blocked from serving (like the align gate)."""

    min_scores: dict[str, float] = Field(default_factory=dict, description="task -> the worst acceptable "
                                         "headline score (at least this for higher-is-better metrics, at most "
                                         "this for lower-is-better ones such as bits_per_byte).")
    max_drop: dict[str, float] = Field(default_factory=dict, description="task -> how much worse than the "
                                       "`baseline` model's headline score a model may be (metric units).")
    baseline: str | None = Field(None, description="The model (a `models:` stage or a `from:` label) that "
                                                   "`max_drop` compares with; it is not gated by max_drop.")


class Config(StageConfig):
    """Evaluate models on lm-eval tasks; one table of every model on every task."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)
    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {"models": MODEL_KINDS, "corpora": ("curate",)}

    kind: Literal["eval"] = Field("eval", description="Selects this stage kind.")
    models: list[str] = Field(default_factory=list, description="Stages (pretrain, sft, dpo, ppo, grpo) whose "
                                                                "model/ is evaluated, e.g. [base, chat, dpo].")
    model_dirs: dict[str, ModelSource] = Field(
        default_factory=dict, alias="from", json_schema_extra=EXTERNAL_INPUT,
        description="External models by label -> Hugging Face causal-LM folder (local path or object-store URI, "
                    "downloaded once into <run>/.models/); its content is fingerprinted.")
    # Not EXTERNAL_INPUT: a bare name is a task name even where a folder of that name exists (`llmray` in a
    # checkout); `content_digests` fingerprints each entry by what it is.
    tasks: list[str] = Field(["llmray"], min_length=1,
                             description="lm-eval task, group or tag names (`llmray`: the three built-in offline "
                                         "tasks; `hellaswag`, `mmlu`, ... need the dataset hub), or paths to task "
                                         "YAML files / folders of them (their content is fingerprinted).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per item (None: each task's own "
                                                            "default).")
    limit: float | None = Field(None, gt=0, description="Items per task: a count (>= 1), or a fraction (< 1) of "
                                                        "each task. None: every item.")
    batch_size: int = Field(16, ge=1, json_schema_extra=EXECUTION_ONLY, description="Requests per forward pass.")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="lm-eval model class: hf (transformers, HFLM), vllm (VLLM), or auto (vllm when "
                            "`resources.num_gpus` > 0 and vllm is installed, else hf).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    max_length: int | None = Field(None, ge=16, description="Context length cap (None: the model's).")
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", description="Wrap prompts in each model's chat template (lm-eval's apply_chat_template). auto: "
                            "on for sft, dpo, ppo and grpo stages, off for pretrain stages and `from:` models.")
    log_samples: bool = Field(False, description="Write every item's prompt, response and score to "
                                                 "results/<model>/samples_<task>.jsonl.")
    bootstrap_iters: int = Field(1000, ge=0, description="Bootstrap resamples for stderr of non-mean metrics "
                                                         "(lm-eval's; 0: none).")
    seed: int = Field(0, description="lm-eval's random, numpy, torch and few-shot seeds.")
    skip_failed: bool = Field(False, json_schema_extra=EXECUTION_ONLY, description="Complete the stage when some model fails to evaluate (it is "
                                                 "listed in metrics.failed) instead of failing it.")
    corpora: list[str] = Field(default_factory=list, description="Further curate stages whose corpora the "
                                                                 "contamination check reads (the curate stages "
                                                                 "the `models:` descend from are always read).")
    contamination: Contamination = Field(default_factory=Contamination, description="Flag tasks whose items "
                                                                                     "appear in training corpora.")
    gate: EvalGate = Field(default_factory=EvalGate, description="Block serving models that lost capability.")
    resources: EvalResources = Field(default_factory=EvalResources,
                                     description="What each model's Ray task reserves (models run in parallel "
                                                 "where the cluster has room).")

    @model_validator(mode="after")
    def _check(self):
        check_model_set(self.models, self.model_dirs)
        if self.limit is not None and self.limit > 1 and self.limit != int(self.limit):
            raise ValueError(f"limit is a count (a whole number) or a fraction below 1 (got {self.limit})")
        if self.gate.max_drop and self.gate.baseline is None:
            raise ValueError("gate.max_drop needs gate.baseline: the model whose scores a drop is measured from")
        if self.gate.baseline is not None and self.gate.baseline not in [*self.models, *self.model_dirs]:
            raise ValueError(f"gate.baseline {self.gate.baseline!r} is not one of the evaluated models")
        if self.backend == "vllm" and self.dtype == "float16" and not self.resources.num_gpus:
            raise ValueError("dtype float16 needs a GPU (resources.num_gpus)")
        return self


    def content_digests(self, pipe, digest) -> dict[str, str]:
        """The tasks' sources by content (llmray.fingerprint.content_inputs; curate's
        `decontaminate.eval_stages` folds these in too)."""
        return {f"tasks.{i}": d for i, d in enumerate(task_digests(self.tasks, digest))}


def run(config: Config, ctx):
    from llmray.eval.stage import run_eval
    from llmray.stages.base import StageResult

    metrics, outputs = run_eval(config, ctx)
    return StageResult(metrics=metrics, outputs=outputs)
