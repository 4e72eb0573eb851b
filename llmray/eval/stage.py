"""The eval stage's run: every model on every task, one Ray task per model, then the tables.

Data flow:
  `tasks:` --harness.resolve_tasks (lm-eval's TaskManager)--> TaskPlan (errors name the entry)
  `models:` stage model/ folders + `from:` folders (resolved, checked as causal LMs, errors name the label)
  --one Ray task per model (the stage's `resources:` per task; models run in parallel where Ray has room;
    a model's results already in the work folder from a failed attempt of this fingerprint are reused)
  --harness.evaluate_model--> results/<model>/results.json (lm-eval's format), samples_<task>.jsonl when
    `log_samples`; a model that fails is recorded (label, error) and the others still finish and are kept
  --tables--> table.csv, table.md, metrics {table, scores, headline, failed, throughput, contamination}
  then, if a model failed and `skip_failed` is off, the stage fails naming it (a rerun evaluates only it).
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_KINDS = ("sft", "dpo", "ppo", "grpo")


def model_folders(config, ctx) -> tuple[dict[str, str], dict[str, str]]:
    """label -> folder, label -> kind (`external` for `from:` models)."""
    from llmray.models import model_cache, resolve_model_source

    folders = {out.name: str(out.path("model")) for out in ctx.inputs.get("models", [])}
    kinds = {out.name: out.kind for out in ctx.inputs.get("models", [])}
    for label, spec in config.model_dirs.items():
        folders[label] = str(resolve_model_source(spec, model_cache(ctx.run_dir), f"stages.{ctx.name}.from.{label}"))
        kinds[label] = "external"
    return folders, kinds


def _chat(config, kind: str) -> bool:
    return config.chat_template == "on" or (config.chat_template == "auto" and kind in CHAT_KINDS)


def _limit(limit: float | None):
    """lm-eval reads an int as a count and a float below 1 as a fraction."""
    return int(limit) if limit is not None and limit >= 1 else limit


def launch(config, folders: dict[str, str], kinds: dict[str, str], plan) -> dict:
    """Start one Ray task per model; {label: ObjectRef}."""
    import ray

    from llmray.eval.harness import evaluate_model, pick_backend

    res = config.resources
    backend = pick_backend(config.backend, res.num_gpus > 0)
    task = ray.remote(evaluate_model).options(**res.ray_options(), max_retries=0)
    refs = {}
    for label, folder in folders.items():
        opts = {"backend": backend, "batch_size": config.batch_size, "max_length": config.max_length,
                "dtype": config.dtype, "num_fewshot": config.num_fewshot, "limit": _limit(config.limit),
                "log_samples": config.log_samples, "bootstrap_iters": config.bootstrap_iters,
                "chat_template": _chat(config, kinds[label]), "seed": config.seed,
                "threads": res.torch_threads()}
        refs[label] = task.remote(folder, plan, opts)
    return refs


def _collect(refs: dict, cache: Path, log) -> tuple[dict, dict]:
    """Wait for every model; results by label, errors by label (one failure loses nothing else)."""
    import ray

    results, failed = {}, {}
    for label, ref in refs.items():
        try:
            results[label] = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - RayTaskError wraps whatever lm-eval or the model raised
            cause = getattr(e, "cause", None) or e
            failed[label] = f"{type(cause).__name__}: {' '.join(str(cause).split())[:500]}"
            log.error("eval: model %s failed: %s", label, failed[label])
            continue
        (cache / f"{label}.json").write_text(json.dumps(results[label]), encoding="utf-8")
    return results, failed


def _write_model(out_dir: Path, label: str, res: dict) -> None:
    d = out_dir / "results" / label
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(res["results"], indent=2), encoding="utf-8")
    for task, samples in (res.get("samples") or {}).items():
        with (d / f"samples_{task}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)


def run_eval(config, ctx) -> tuple[dict, dict]:
    """The stage body; returns (metrics, outputs). Fixed cost: work = the time some model is being scored
    (the tasks' `eval_span`s, overlaps once); startup = the start -> the first scoring (task resolution, Ray
    tasks, imports, the first model load); data = the contamination check; export = results and tables;
    other = the rest (model loads and waits no scoring overlapped)."""
    from llmray.eval import tables
    from llmray.eval.harness import TaskSpecError, resolve_tasks
    from llmray.stages.base import FixedCost

    cost = FixedCost()
    try:
        plan = resolve_tasks(config.tasks, f"stages.{ctx.name}.tasks")
    except TaskSpecError as e:
        raise ValueError(str(e)) from None
    ctx.log.info("eval: tasks %s (include paths %s)", plan.names, plan.include_paths)
    folders, kinds = model_folders(config, ctx)
    cache = ctx.work_dir / "model-results"
    cache.mkdir(parents=True, exist_ok=True)
    results = {lb: json.loads((cache / f"{lb}.json").read_text()) for lb in folders if (cache / f"{lb}.json").is_file()}
    if results:
        ctx.log.info("eval: reusing results of %s from a failed attempt", sorted(results))
    new, failed = _collect(launch(config, {k: v for k, v in folders.items() if k not in results}, kinds, plan),
                           cache, ctx.log)
    results.update(new)
    for res in new.values():
        cost.work(*res["eval_span"])
    cost.add("startup", cost.uncovered())
    order = [m for m in folders if m in results or m in failed]
    with cost.phase("data"):
        contaminated = contamination_flags(config, ctx, plan)
    flags = {t: bool(c.get("matched")) for t, c in contaminated.items()}
    with cost.phase("export"):
        rows, heads, md = _write_outputs(ctx, order, results, failed, flags)
    if failed and not config.skip_failed:
        raise RuntimeError(f"stages.{ctx.name}: {len(failed)} model(s) failed to evaluate (the others' results "
                           f"are kept in the work folder; a rerun evaluates only these): "
                           + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    gate = capability_gate(config, rows, heads, order, failed)
    if gate:
        ctx.log.info("eval gate: %s", {k: (v["status"], v["reasons"]) for k, v in gate.items()})
    metrics = {"tasks": plan.names, "gate": gate, "models": order, "kinds": {m: kinds[m] for m in order},
               "headline": heads, "scores": tables.scores(rows, heads), "table": rows, "table_md": md,
               "failed": failed, "contamination": contaminated,
               "throughput": {m: {k: results[m][k] for k in ("backend", "items", "load_seconds", "eval_seconds",
                                                             "items_per_second")} for m in results},
               "fixed_cost": cost.metrics(work_s=cost.work_s())}
    return metrics, {"results": "results", "table": "table.csv", "table_md": "table.md"}


def _write_outputs(ctx, order: list[str], results: dict, failed: dict, flags: dict) -> tuple[list, dict, str]:
    """results/<model>/, table.csv and table.md; returns (score rows, headline metrics, the Markdown table)."""
    from llmray.eval import tables

    rows, heads = [], {}
    for label in order:
        if label in results:
            _write_model(ctx.out_dir, label, results[label])
            rows += tables.score_rows(label, results[label]["results"], flags)
            heads.update(tables.headline(results[label]["results"]))
    tables.write_csv(rows, ctx.out_dir / "table.csv")
    md = tables.markdown(rows, heads, order, failed, flags)
    (ctx.out_dir / "table.md").write_text(md, encoding="utf-8")
    ctx.log.info("eval table:\n%s", md)
    return rows, heads, md


def capability_gate(config, rows: list[dict], heads: dict, order: list[str], failed: dict) -> dict:
    """{model: {status, reasons, basis}} from `gate:` (llmray.safety.gate.decide_scores); {} without one."""
    from llmray.eval.tables import scores
    from llmray.safety.gate import decide_scores

    g = config.gate
    if not (g.min_scores or g.max_drop):
        return {}
    by_model = scores(rows, heads)
    up = {r["task"]: r["higher_is_better"] is not False for r in rows
          if heads.get(r["task"]) == f"{r['metric']},{r['filter']}"}
    out = {}
    for m in order:
        if m in failed:
            out[m] = {"status": "blocked", "reasons": [f"evaluation failed: {failed[m]}"], "basis": "capability scores"}
            continue
        drop = {} if m == g.baseline else g.max_drop
        out[m] = decide_scores(by_model.get(m, {}), up, g.min_scores, drop, by_model.get(g.baseline), g.baseline)
    return out


def contamination_flags(config, ctx, plan) -> dict:
    """Per task: {"items", "matched"} against the curated corpora upstream (see llmray.eval.contamination)."""
    if not config.contamination.enabled:
        return {}
    from llmray.eval.contamination import check_upstream

    return check_upstream(config, ctx, plan)
