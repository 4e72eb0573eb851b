"""lm-eval results dicts -> the stage's tables: long rows (model, task, metric, value, stderr), the
model x task markdown table of each task's headline metric, and `table.csv`.

Data flow: {label: lm-eval results dict} --`score_rows`--> one row per (model, task, metric, filter)
--`write_csv`--> table.csv; --`headline`--> {task: "metric,filter"} (a task's first metric in its
YAML's metric_list, as lm-eval's own table lists it) --`markdown`--> table.md, a cell "value ± stderr",
with a dagger on tasks found in the training corpora (`contaminated`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

_NOT_METRICS = {"alias", "name", "sample_len", " ", "samples"}
CSV_COLUMNS = ("model", "task", "metric", "filter", "value", "stderr", "higher_is_better", "n", "contaminated")


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def score_rows(label: str, out: dict, contaminated: dict | None = None) -> list[dict]:
    """One row per (task, metric, filter) of one model's lm-eval output."""
    rows = []
    hib = out.get("higher_is_better", {})
    nsamp = out.get("n-samples", {})
    for task, res in out.get("results", {}).items():
        for key, value in res.items():
            if key in _NOT_METRICS or "_stderr," in key or "," not in key:
                continue
            metric, filt = key.split(",", 1)
            if _num(value) is None:
                continue
            n = nsamp.get(task, {})
            rows.append({"model": label, "task": task, "metric": metric, "filter": filt, "value": _num(value),
                         "stderr": _num(res.get(f"{metric}_stderr,{filt}")),
                         "higher_is_better": hib.get(task, {}).get(metric),
                         "n": n.get("effective", n.get("original")),
                         "contaminated": (contaminated or {}).get(task)})
    return rows


def headline(out: dict) -> dict[str, str]:
    """task -> its headline "metric,filter": the first of its YAML's metric_list (first filter)."""
    heads = {}
    for task, res in out.get("results", {}).items():
        keys = [k for k in res if "," in k and "_stderr," not in k and _num(res[k]) is not None]
        metric_list = out.get("configs", {}).get(task, {}).get("metric_list") or []
        first = metric_list[0].get("metric") if metric_list else None
        preferred = [k for k in keys if k.split(",", 1)[0] == first]
        if preferred or keys:
            heads[task] = (preferred or keys)[0]
    return heads


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows({k: r.get(k) for k in CSV_COLUMNS} for r in rows)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    s = f"{row['value']:.4f}"
    return f"{s} ± {row['stderr']:.4f}" if row.get("stderr") is not None else s


def markdown(rows: list[dict], heads: dict[str, str], models: list[str], failed: dict | None = None,
             contaminated: dict | None = None) -> str:
    """Model x task table of each task's headline metric ("value ± stderr"); failed models say so."""
    by = {(r["model"], r["task"], f"{r['metric']},{r['filter']}"): r for r in rows}
    tasks = sorted(heads)

    def title(task: str) -> str:
        dagger = " †" if (contaminated or {}).get(task) else ""
        return f"{task} ({heads[task].split(',')[0]}){dagger}"

    lines = ["| model | " + " | ".join(title(t) for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in models:
        if m in (failed or {}):
            lines.append(f"| {m} | " + " | ".join("failed" for _ in tasks) + " |")
        else:
            lines.append(f"| {m} | " + " | ".join(_cell(by.get((m, t, heads[t]))) for t in tasks) + " |")
    if any((contaminated or {}).get(t) for t in tasks):
        lines.append("\n† items of this task were found in the curated training corpora (see `contamination`).")
    return "\n".join(lines) + "\n"


def scores(rows: list[dict], heads: dict[str, str]) -> dict[str, dict[str, float]]:
    """{model: {task: headline value}} (for the manifest, the report and gates)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if heads.get(r["task"]) == f"{r['metric']},{r['filter']}":
            out.setdefault(r["model"], {})[r["task"]] = r["value"]
    return out
