"""Stage kind `align`: red-team evaluation of stage models, a trained output guardrail, a safety gate.

Data flow:
  red-team suite (built-in held-out intents by category + benign mirrors; user JSONL `suites:`,
    bad lines -> quarantine/suites.jsonl)                     -> suite.jsonl
  held-out "what does this function do" questions (llmray.safety.answers.question_set, `answers.n`)
  `models:` stage model/ folders (+ `from:` external models, resolved and checked by llmray.models)
    --Ray tasks, fractional CPUs, one per model, transformers greedy `generate` through each
    folder's chat template and generation config--> responses (suite) and answers (questions)
  meanwhile, in the driver: labelled (prompt, response) pairs of the instruct TRAIN split
    --two hashed n-gram logistic regressions, P(harmful request) x P(response complies)-->
    guardrail/ (config.json + weights.safetensors),
    assessed on held-out TEST-split pairs (accuracy, precision/recall, screen latency)
  responses --rule judge (is_refusal) + guardrail judge, unguarded and guarded--> table (seen
    categories; `unseen` block), by_category (technique), by_harm (harm category), each rate with
    its 95% Wilson interval; samples -> responses/<model>.jsonl
  answers --word F1 vs reference, distinct-2, degenerate share--> metrics.answers, answers/<model>.jsonl
  table rows --gate: the model alone, then with the guardrail in front--> metrics.gate
    {model: passed|blocked + reasons}; metrics.table_md (what `llmray status` prints)
The serve app reads the gate with `llmray.safety.gate.gate_status` and screens every response with
`llmray.safety.guardrail.load_guardrail(<this stage>/guardrail)`.
Implementation: llmray.safety (redteam, pairs, guardrail, evaluate, answers, gate, tables).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmray.config import EXTERNAL_INPUT, StageConfig, StrictModel
from llmray.models import ModelSource, check_model_set, model_cache, resolve_model_source
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


def _model_folders(config: Config, ctx) -> dict[str, str]:
    """Label -> model folder: the `models:` stages' model/, and the `from:` models resolved (URIs
    downloaded into the run's model cache) and checked as causal LMs."""
    folders = {out.name: str(out.path("model")) for out in ctx.inputs.get("models", [])}
    for label, spec in config.model_dirs.items():
        folder = resolve_model_source(spec, model_cache(ctx.run_dir), f"stages.{ctx.name}.from.{label}")
        folders[label] = str(folder.resolve())
    return folders


def _build_suite(config: Config, ctx):
    from llmray.data.formats import write_jsonl
    from llmray.data.redteam import build_suite, summary

    suite, quarantined = build_suite(config.builtin_suite, config.suites, config.max_per_group)
    write_jsonl(ctx.out_dir / "suite.jsonl", suite)
    write_jsonl(ctx.out_dir / "quarantine" / "suites.jsonl", quarantined)
    for q in quarantined[:20]:
        ctx.log.warning("quarantined %s:%s: %s", q["file"], q["line"], q["reason"])
    info = summary(suite, quarantined)
    ctx.log.info("red-team suite: %s", info)
    return suite, info


def _train_guardrail(config: Config, ctx):
    """Fit on train-split pairs, assess on held-out test-split pairs, export to guardrail/."""
    from llmray.data.instruct import REFUSALS
    from llmray.data.pairs import labelled_pairs
    from llmray.safety.guardrail import FeatureSpec, assess, train_guardrail

    gc = config.guardrail
    spec = FeatureSpec(dim_bits=gc.dim_bits, word_ngrams=gc.word_ngrams, char_ngrams=tuple(gc.char_ngrams),
                       refusal_feature=gc.refusal_feature)
    train, heldout = labelled_pairs("train", gc.seed), labelled_pairs("test", gc.seed)
    guard = train_guardrail(train, spec, steps=gc.steps, lr=gc.lr, l2=gc.l2, threshold=gc.threshold,
                            refusal=gc.refusal_text or REFUSALS[0])
    train_fit, report = assess(guard, train), assess(guard, heldout)
    info = {"train_pairs": len(train), "train_unsafe": sum(p["label"] for p in train),
            "train_accuracy": round(train_fit["accuracy"], 4), "heldout_pairs": len(heldout),
            "heldout_unsafe": sum(p["label"] for p in heldout),
            **{f"heldout_{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in report.items()
               if k not in ("n", "latency_us_p50", "latency_us_p99")},
            "screen_latency_us_p50": round(report["latency_us_p50"], 1),
            "screen_latency_us_p99": round(report["latency_us_p99"], 1),
            "threshold": gc.threshold,
            # Guarded figures assume the replacement text itself passes: check it on every held-out request.
            "refusal_text_flagged": sum(guard.screen(t, guard.refusal_text()).flagged
                                        for t in {p["prompt"] for p in heldout})}
    guard.info = {k: v for k, v in info.items() if k != "heldout_by_group"}
    guard.save(ctx.out_dir / "guardrail")
    ctx.log.info("guardrail: held-out accuracy %.4f (precision %.4f, recall %.4f, FPR %.4f) on %d pairs; "
                 "screen p50 %.0f us", info["heldout_accuracy"], info["heldout_precision"],
                 info["heldout_recall"], info["heldout_false_positive_rate"], len(heldout),
                 info["screen_latency_us_p50"])
    return guard, info


def _score_all(config: Config, ctx, suite, guard, results: dict, kinds: dict):
    """Judge every model's responses; table rows, by-category and by-harm figures, samples, gate."""
    from llmray.data.formats import write_jsonl
    from llmray.safety.evaluate import breakdown, judge_records, samples, summarize
    from llmray.safety.gate import decide

    table, by_category, by_harm, sample_list, gate = [], {}, {}, [], {}
    for label, res in results.items():
        judged = judge_records(suite, res["responses"]["suite"], guard, config.judge)
        write_jsonl(ctx.out_dir / "responses" / f"{label}.jsonl", judged)
        row, by_cat = summarize(label, judged)
        row.update(kind=kinds[label], generate_seconds=res["generate_seconds"], new_tokens=res["new_tokens"],
                   chat_template=res["chat_template"], decoding=res["decoding"])
        table.append(row)
        by_category[label], by_harm[label] = by_cat, breakdown(judged, "harm")
        sample_list.extend(samples(label, judged, config.samples_per_model))
        gate[label] = decide(row, by_cat, **config.gate.model_dump())
        ctx.log.info("%s: unsafe %s -> guarded %s; over-refusal %s -> guarded %s; gate %s %s", label,
                     row["unsafe_rate"], row["unsafe_rate_guarded"], row["over_refusal"],
                     row["over_refusal_guarded"], gate[label]["status"], gate[label]["reasons"])
    return table, by_category, by_harm, sample_list, gate


def _score_answers(config: Config, ctx, questions: list[dict], results: dict) -> dict:
    """metrics.answers: per model figures and example answers; every answer in answers/<model>.jsonl."""
    from llmray.data.formats import write_jsonl
    from llmray.safety.answers import score_answers

    out = {}
    for label, res in results.items():
        summary, recs = score_answers(questions, res["responses"]["answers"])
        write_jsonl(ctx.out_dir / "answers" / f"{label}.jsonl", recs)
        # The same first questions for every model, so the report shows them side by side.
        summary["examples"] = [{k: r[k] for k in ("prompt", "reference", "response", "word_f1", "degenerate")}
                               for r in recs[:config.answers.examples]]
        summary["seconds"] = res["seconds"].get("answers")
        out[label] = summary
        ctx.log.info("%s answers: word F1 %s, distinct-2 %s, degenerate %s, %s words", label,
                     summary["word_f1"], summary["distinct_2"], summary["degenerate_rate"], summary["mean_words"])
    return out


def run(config: Config, ctx):
    import ray

    from llmray.safety.answers import question_set
    from llmray.safety.evaluate import generate_in_ray
    from llmray.safety.tables import align_markdown
    from llmray.stages.base import StageResult

    suite, suite_info = _build_suite(config, ctx)
    folders = _model_folders(config, ctx)
    kinds = {out.name: out.kind for out in ctx.inputs.get("models", [])}
    kinds.update({label: "external" for label in config.model_dirs})
    gen = config.generation
    questions = question_set(config.answers.n)
    jobs = {"suite": ([r["messages"] for r in suite], gen.max_new_tokens),
            "answers": ([q["prompt"] for q in questions], config.answers.max_new_tokens)}
    # Generation runs in Ray tasks (one per model, both prompt sets) while the driver trains the guardrail.
    refs = generate_in_ray(folders, jobs, gen.batch_size, gen.cpus_per_model, gen.gpus_per_model)
    guard, guard_info = _train_guardrail(config, ctx)
    results = {label: ray.get(ref) for label, ref in refs.items()}
    table, by_category, by_harm, sample_list, gate = _score_all(config, ctx, suite, guard, results, kinds)
    answers = _score_answers(config, ctx, questions, results) if questions else {}
    metrics = {"suite": suite_info, "guardrail": guard_info, "judge": config.judge, "table": table,
               "by_category": by_category, "by_harm": by_harm, "answers": answers, "samples": sample_list,
               "gate": gate, "gate_thresholds": config.gate.model_dump(),
               "blocked": sorted(k for k, v in gate.items() if v["status"] == "blocked")}
    metrics["table_md"] = align_markdown(metrics)
    outputs = {"guardrail": "guardrail", "responses": "responses", "suite": "suite.jsonl", "quarantine": "quarantine"}
    if answers:
        outputs["answers"] = "answers"
    return StageResult(metrics=metrics, outputs=outputs)
