"""Eval task documents as decontamination sets, and the eval stage's per-task contamination check.

Data flow: TaskPlan --lm-eval's TaskManager + get_task_dict--> every task's evaluated documents (the first
`limit` of its eval split, as lm-eval takes them) --`item_text`: the task's own
`doc_to_decontamination_query` when it declares one, else prompt + the correct answer(s)-->
{task: [(item id, text)]}. Two readers:
- the eval stage: `check_upstream` indexes those items (llmray.curate.decontam.index_texts: word n-grams)
  and scans the `data/*.parquet` of every curate stage the evaluated stage models descend from (and of
  the stages in `corpora:`); per task
  {"items", "too_short", "matched", "by_corpus", "examples"}. A task with matched > 0 is marked in the table.
- a curate stage with `decontaminate.eval_stages`: `eval_stage_sets` turns the named eval stages' tasks into
  its eval sets (the same texts), so the corpus is cleaned of exactly what the evals score.
"""

from __future__ import annotations


def _flatten(task_dict) -> dict:
    from lm_eval.api.task import Task

    out = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(_flatten(value))
        elif isinstance(value, Task):
            out[value.config.task if hasattr(value, "config") else str(key)] = value
    return out


def item_text(task, doc) -> str:
    """What an item is, as text: the task's decontamination query, or its prompt and correct answer(s)."""
    query = getattr(task.config, "doc_to_decontamination_query", None)
    if task.should_decontaminate() and isinstance(query, str):
        from lm_eval.utils import apply_template

        # Rendered as text: lm-eval's own accessor literal_evals it, which fails on prose and code.
        return apply_template(query, doc) if query not in doc else str(doc[query])
    if task.should_decontaminate() and query is not None:
        return str(task.doc_to_decontamination_query(doc))
    parts = [task.doc_to_text(doc)]
    target = task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = task.doc_to_choice(doc)
        for t in target if isinstance(target, list) else [target]:
            parts.append(choices[t] if isinstance(t, int) and 0 <= t < len(choices) else t)
    else:
        parts.extend(target if isinstance(target, list) else [target])
    return " ".join(str(p) for p in parts if p is not None)


def task_documents(plan, limit: float | None = None) -> dict[str, list[tuple[str, str]]]:
    """{task: [(item number, text)]} for every task lm-eval would evaluate under `plan`."""
    from lm_eval.tasks import get_task_dict

    from llmray.eval.harness import task_manager

    tasks = _flatten(get_task_dict(list(plan.names), task_manager(plan)))
    out = {}
    for name, task in sorted(tasks.items()):
        docs = list(task.eval_docs)
        n = len(docs) if limit is None else (int(limit) if limit >= 1 else int(len(docs) * limit))
        out[name] = [(str(i), item_text(task, doc)) for i, doc in enumerate(docs[:n])]
    return out


def _corpus_texts(folder, batch: int = 2048, max_docs: int | None = None):
    import pyarrow.parquet as pq

    seen = 0
    for f in sorted(folder.glob("*.parquet")):
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch, columns=["text"]):
            texts = rb.column(0).to_pylist()
            if max_docs is not None:
                texts = texts[: max_docs - seen]
            seen += len(texts)
            yield texts
            if max_docs is not None and seen >= max_docs:
                return


def upstream_corpora(pipe, models: list[str]) -> list[str]:
    from llmray.graph import ancestors

    return sorted(s for s in ancestors(pipe, list(models)) if pipe.stages[s].kind == "curate")


def check_upstream(config, ctx, plan) -> dict:
    """Per task: how many of its evaluated items share an n-gram with an upstream curated corpus."""
    from llmray.curate.decontam import index_texts

    corpora = sorted(set(upstream_corpora(ctx.pipeline, config.models)) | set(config.corpora))
    if not corpora:
        return {}
    docs = task_documents(plan, config.limit)
    index = index_texts(docs, config.contamination.ngram)
    hits: dict[str, dict[str, set]] = {t: {} for t in docs}
    for corpus in corpora:
        for texts in _corpus_texts(ctx.run_dir / corpus / "data", max_docs=config.contamination.max_docs):
            for _, keys in index.match(texts):
                for key in keys:
                    task, item = key.split(":", 1)
                    hits[task].setdefault(corpus, set()).add(item)
    out = {}
    for task, items in docs.items():
        matched = set().union(*hits[task].values()) if hits[task] else set()
        out[task] = {"items": len(items), "too_short": index.report[task]["too_short"], "matched": len(matched),
                     "by_corpus": {c: len(v) for c, v in hits[task].items()},
                     "examples": [items[int(i)][1][:160] for i in sorted(matched, key=int)[:3]]}
        ctx.log.info("contamination %s: %d/%d items matched %s", task, len(matched), len(items), sorted(hits[task]))
    return out


def eval_stage_sets(names: list[str], ctx) -> dict[str, list[tuple[str, str]]]:
    """Curate's `decontaminate.eval_stages`: {"<eval stage>/<task>": [(item number, text)]}, every item of
    every task the named eval stages run. Errors name the field."""
    from llmray.eval.harness import TaskSpecError, resolve_tasks

    out = {}
    for i, name in enumerate(names):
        where = f"stages.{ctx.name}.decontaminate.eval_stages[{i}]"
        stage = ctx.pipeline.stages.get(name)
        if stage is None or stage.kind != "eval":
            what = "no stage" if stage is None else f"a {stage.kind} stage, not an eval stage"
            raise ValueError(f"{where}: {name!r} is {what}")
        try:
            plan = resolve_tasks(stage.tasks, f"stages.{name}.tasks")
        except TaskSpecError as e:
            raise ValueError(f"{where}: {e}") from None
        for task, items in task_documents(plan).items():
            out[f"{name}/{task}"] = items
        ctx.log.info("decontaminate: eval stage %s: %s", name, {t: len(v) for t, v in out.items()})
    return out
