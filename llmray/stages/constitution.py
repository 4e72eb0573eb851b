"""Stage kind `constitution`: Constitutional AI — AI feedback from written principles (Bai et al., 2022).

Data flow:
  `prompts:` (built-in: the red-team prompts' TRAIN split, harmful and their harmless mirrors; never the
    align stage's held-out suite)                                      -> prompt records
  one Ray task (`llmray.safety.constitution.feedback_task`) on the stage's resources:
    the policy (`init:` stage or `from:` folder/URI) answers each prompt `samples` times (vLLM or transformers)
    the feedback model (`feedback:` stage, `feedback_from:` folder/URI, or the policy itself) critiques the
      first answer under a principle and revises it                   (SL-CAI)
    it compares answer pairs and revision-vs-answer under a principle, from its log-probabilities
      ("(A)"/"(B)" in both orders, or "(Yes)"/"(No)" per answer: `judge`)  (RL-CAI / RLAIF)
    and the same on a held-out calibration set with known answers      (how far to trust it)
  driver: pairs below `min_confidence` dropped; split by a hash of the prompt id ->
    data/prefs.jsonl  {"id","prompt","chosen","rejected","p_chosen","principle","source","split"}
    data/sft.jsonl    {"id","messages": prompt + the revision, "principle","split"}
    trace.jsonl (prompt, answers, critique, revision) and calibration.jsonl, for audit.
`sft`, `reward` and `dpo` stages add these records to their data with `ai_feedback: [<this stage>]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmray.config import EXTERNAL_INPUT, StageConfig, StrictModel, with_defaults
from llmray.data.formats import check_fields, check_spec
from llmray.models import ModelSource, check_start, model_cache, resolve_model_source
from llmray.resources import ActorResources

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
FeedbackResources = with_defaults(ActorResources, "FeedbackResources", __name__, num_cpus=1)


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
    from llmray.safety.constitution import PRINCIPLES

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


def _model_dirs(config: Config, ctx) -> tuple[Path, Path]:
    """(policy folder, feedback folder): stage model/ folders, or `from:` / `feedback_from:` folders
    resolved (URIs downloaded into the run's model cache) and checked as causal LMs."""
    cache = model_cache(ctx.run_dir)
    if config.init:
        policy = ctx.input("init").path("model")
    else:
        policy = resolve_model_source(config.from_, cache, f"stages.{ctx.name}.from")
    if config.feedback:
        return policy, ctx.input("feedback").path("model")
    if config.feedback_from:
        return policy, resolve_model_source(config.feedback_from, cache, f"stages.{ctx.name}.feedback_from")
    return policy, policy


def _prompts(config: Config, ctx) -> tuple[list[dict], int]:
    from llmray.data.formats import load_data, write_quarantine

    loaded = load_data(config.prompts, "prompt", "train", config.fields, what="prompts")
    write_quarantine(loaded.quarantined, ctx.out_dir, "prompts")
    recs = loaded.records
    if not recs:
        raise ValueError(f"prompts: no usable records in {config.prompts!r} (see quarantine/prompts.jsonl)")
    if config.max_prompts and len(recs) > config.max_prompts:
        step = len(recs) / config.max_prompts  # an even spread keeps the harmful/benign mix
        recs = [recs[int(i * step)] for i in range(config.max_prompts)]
    return [{"id": r["id"], "prompt": r["prompt"], **({"harmful": r["harmful"]} if "harmful" in r else {})}
            for r in recs], len(loaded.quarantined)


def _task_config(config: Config) -> dict:
    return {"principles": [p.model_dump() for p in config.principles], "samples": config.samples,
            "revise": config.revise, "sampling": config.generation.model_dump(),
            "feedback_sampling": config.feedback_generation.model_dump(), "engine": config.engine.engine,
            "engine_opts": config.engine.model_dump(exclude={"engine"}), "seed": config.seed,
            "judge_batch_size": config.judge_batch_size, "judge": config.judge, "calibration_pairs": config.calibration_pairs,
            "threads": config.resources.torch_threads()}


def _records(config: Config, prompts: list[dict], res: dict) -> tuple[list[dict], list[dict], int]:
    """Preference and SFT records (with their split); how many pairs the confidence rules dropped."""
    from llmray.posttrain import held_out

    by_id = {p["id"]: p for p in prompts}
    prefs, dropped = [], 0
    for pair in res["pairs"]:
        p = pair["p_first"]
        if abs(p - 0.5) < config.min_confidence or (config.require_consistent and pair["consistent"] is False) \
                or pair["first"] == pair["second"]:
            dropped += 1
            continue
        chosen, rejected = (pair["first"], pair["second"]) if p >= 0.5 else (pair["second"], pair["first"])
        prefs.append({"id": pair["id"], "prompt": by_id[pair["prompt_id"]]["prompt"], "chosen": chosen,
                      "rejected": rejected, "p_chosen": round(max(p, 1 - p), 4), "principle": pair["principle"],
                      "source": pair["source"], "consistent": pair["consistent"],
                      "split": "test" if held_out(pair["prompt_id"], config.eval_fraction) else "train"})
    sft = []
    if config.revise:
        from llmray.safety.constitution import principle_for

        principles = [p.model_dump() for p in config.principles]
        for p, rev in zip(prompts, res["revisions"]):
            if rev:
                sft.append({"id": f"{p['id']}:rev", "messages": [*p["prompt"], {"role": "assistant", "content": rev}],
                            "principle": principle_for(p["id"], principles)["name"],
                            "split": "test" if held_out(p["id"], config.eval_fraction) else "train"})
    return prefs, sft, dropped


def _rate(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def _on_policy(prompts: list[dict], prefs: list[dict]) -> dict:
    """The judge on the policy's own answers, where the rule judge can settle it: prompts flagged
    `harmful` true/false (built-in red-team prompts are), pairs with exactly one refusal. Agreement =
    the refusal chosen for a harmful prompt, the other answer for a harmless one. Calibration pairs are
    clean templates; this is the figure on the answers the pairs are actually made of."""
    from llmray.data.instruct import is_refusal

    flag = {p["id"]: p["harmful"] for p in prompts if "harmful" in p}
    out = {}
    for kind, want in (("harmful", True), ("benign", False)):
        sel = [r for r in prefs if flag.get(r["id"].rsplit(":", 1)[0]) is want
               and is_refusal(r["chosen"]) != is_refusal(r["rejected"])]
        out[f"pairs_{kind}"] = len(sel)
        out[f"agreement_{kind}"] = _rate(is_refusal(r["chosen"]) == want for r in sel)
    return out


def _calibration(calib: list[dict]) -> dict:
    """The feedback model on the held-out comparisons with known answers (the better one is first)."""
    return {"pairs": len(calib), "agreement": _rate(c["p_first"] >= 0.5 for c in calib),
            "agreement_harmful": _rate(c["p_first"] >= 0.5 for c in calib if c["kind"] == "harmful"),
            "agreement_benign": _rate(c["p_first"] >= 0.5 for c in calib if c["kind"] == "benign"),
            "position_consistency": _rate(c["consistent"] for c in calib if c["consistent"] is not None)}


def _metrics(prompts, res: dict, prefs: list[dict], sft: list[dict], dropped: int) -> dict:
    from llmray.data.instruct import is_refusal

    return {
        "prompts": len(prompts), "answers": sum(len(a) for a in res["answers"]),
        "revisions": sum(1 for r in res["revisions"] if r), "pairs": len(res["pairs"]), "pairs_kept": len(prefs),
        "pairs_dropped": dropped, "sft_records": len(sft),
        "train_pairs": sum(r["split"] == "train" for r in prefs), "test_pairs": sum(r["split"] == "test" for r in prefs),
        "position_consistency": _rate(p["consistent"] for p in res["pairs"] if p["consistent"] is not None),
        "mean_confidence": _rate(r["p_chosen"] for r in prefs),
        "answer_refusal_rate": _rate(is_refusal(a) for row in res["answers"] for a in row),
        "revision_refusal_rate": _rate(is_refusal(r) for r in res["revisions"] if r),
        # Where the AI feedback pushes a model trained on it: refusals among chosen vs rejected answers.
        "chosen_refusal_rate": _rate(is_refusal(r["chosen"]) for r in prefs),
        "rejected_refusal_rate": _rate(is_refusal(r["rejected"]) for r in prefs),
        # How often the feedback model prefers its own revision to the answer it revised.
        "revision_preferred": _rate(p["p_first"] >= 0.5 for p in res["pairs"] if p["source"] == "revision"),
        "on_policy": _on_policy(prompts, prefs),
        "calibration": _calibration(res["calibration"]),
        "engine": res["engine"], "timings": res["timings"],
    }


def run(config: Config, ctx):
    import ray

    from llmray.data.formats import write_jsonl
    from llmray.safety.constitution import feedback_task
    from llmray.stages.base import StageResult

    policy_dir, feedback_dir = _model_dirs(config, ctx)
    prompts, quarantined = _prompts(config, ctx)
    task = ray.remote(feedback_task).options(**config.resources.ray_options(), max_retries=1)
    ctx.log.info("constitution: %d prompts x %d answers from %s; feedback model %s", len(prompts), config.samples,
                 policy_dir, feedback_dir)
    res = ray.get(task.remote(str(policy_dir), str(feedback_dir), prompts, _task_config(config),
                              str(ctx.work_dir / "engine-tmp")))
    agreement = _calibration(res["calibration"])["agreement"]
    if config.min_calibration is not None and (agreement is None or agreement < config.min_calibration):
        raise ValueError(f"min_calibration: the feedback model {feedback_dir} agrees with {agreement} of "
                         f"{len(res['calibration'])} held-out calibration pairs, below {config.min_calibration}; "
                         "its preferences would be noise (use a stronger feedback model)")
    prefs, sft, dropped = _records(config, prompts, res)
    write_jsonl(ctx.out_dir / "data" / "prefs.jsonl", prefs)
    write_jsonl(ctx.out_dir / "data" / "sft.jsonl", sft)
    write_jsonl(ctx.out_dir / "trace.jsonl", [
        {"id": p["id"], "prompt": p["prompt"], "answers": a, "critique": c, "revision": r}
        for p, a, c, r in zip(prompts, res["answers"], res["critiques"], res["revisions"])])
    write_jsonl(ctx.out_dir / "calibration.jsonl", res["calibration"])
    metrics = {**_metrics(prompts, res, prefs, sft, dropped), "quarantined": quarantined,
               "calibration_agreement": agreement,  # top level too: the report's tile
               "feedback_model": "policy" if feedback_dir == policy_dir else (config.feedback or "folder")}
    cal = metrics["calibration"]
    ctx.log.info("constitution: %d pairs kept of %d; calibration agreement %s (harmful %s, benign %s); "
                 "position consistency %s", len(prefs), len(res["pairs"]), cal["agreement"],
                 cal["agreement_harmful"], cal["agreement_benign"], metrics["position_consistency"])
    return StageResult(metrics=metrics, outputs={"prefs": "data/prefs.jsonl", "sft": "data/sft.jsonl",
                                                 "trace": "trace.jsonl", "calibration": "calibration.jsonl"})
