"""The `align` stage's run (`run_align`, called by `llmray.stages.align.run`): red-team evaluation of
stage models, a trained output guardrail, a safety gate.

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
Parts: llmray.data (redteam, pairs), llmray.safety (guardrail, evaluate, answers, gate, tables).
"""

from __future__ import annotations

import time

from llmray.models import model_cache, resolve_model_source
from llmray.stages.base import FixedCost, StageResult


def _model_folders(config, ctx) -> dict[str, str]:
    """Label -> model folder: the `models:` stages' model/, and the `from:` models resolved (URIs
    downloaded into the run's model cache) and checked as causal LMs."""
    folders = {out.name: str(out.path("model")) for out in ctx.inputs.get("models", [])}
    for label, spec in config.model_dirs.items():
        folder = resolve_model_source(spec, model_cache(ctx.run_dir), f"stages.{ctx.name}.from.{label}")
        folders[label] = str(folder.resolve())
    return folders


def _build_suite(config, ctx):
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


def _train_guardrail(config, ctx):
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


def _score_all(config, ctx, suite, guard, results: dict, kinds: dict):
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


def _score_answers(config, ctx, questions: list[dict], results: dict) -> dict:
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


def run_align(config, ctx) -> StageResult:
    """The `align` stage (`config`: llmray.stages.align.Config): suite, generation, guardrail, scores, gate."""
    import ray

    from llmray.safety.answers import question_set
    from llmray.safety.evaluate import generate_in_ray
    from llmray.safety.tables import align_markdown

    # Fixed cost: work = generation in the tasks, the guardrail's training and assessment, and scoring (spans,
    # overlaps once); startup = what no work hid before the first model generates (suite, tasks, model load).
    cost = FixedCost()
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
    t = time.time()
    guard, guard_info = _train_guardrail(config, ctx)
    cost.work(t, time.time())
    results = {label: ray.get(ref) for label, ref in refs.items()}
    for res in results.values():
        cost.work(*res["generate_span"])
    cost.add("startup", cost.uncovered(min((r["generate_span"][0] for r in results.values()), default=None)))
    t = time.time()
    table, by_category, by_harm, sample_list, gate = _score_all(config, ctx, suite, guard, results, kinds)
    answers = _score_answers(config, ctx, questions, results) if questions else {}
    cost.work(t, time.time())
    metrics = {"suite": suite_info, "guardrail": guard_info, "judge": config.judge, "table": table,
               "by_category": by_category, "by_harm": by_harm, "answers": answers, "samples": sample_list,
               "gate": gate, "gate_thresholds": config.gate.model_dump(),
               "blocked": sorted(k for k, v in gate.items() if v["status"] == "blocked")}
    metrics["table_md"] = align_markdown(metrics)
    metrics["fixed_cost"] = cost.metrics(work_s=cost.work_s())
    outputs = {"guardrail": "guardrail", "responses": "responses", "suite": "suite.jsonl", "quarantine": "quarantine"}
    if answers:
        outputs["answers"] = "answers"
    return StageResult(metrics=metrics, outputs=outputs)
