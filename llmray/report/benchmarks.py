"""The report's benchmark section: every eval stage's model x task table and one bar chart per task.

Data flow: eval stages' `metrics.scores` ({model: {task: headline value}}), `metrics.headline`
({task: "metric,filter"}), `metrics.table` (rows with stderr), `metrics.contamination` and `metrics.failed`
--> an HTML table (value ± stderr, † on contaminated tasks, `failed` cells) and `svg.bar_chart`s, so every
stage's model sits side by side on the same tasks. Nothing here reads files: the views carry the manifests.
"""

from __future__ import annotations

from llmray.report.svg import Bar, bar_chart, esc, fmt_num


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def eval_stage_html(stage) -> str:
    """One eval stage: the model x task table of headline metrics and a bar chart per task."""
    m = stage.metrics
    heads, scores = m.get("headline") or {}, m.get("scores") or {}
    if not heads:
        return ""
    failed, cont = m.get("failed") or {}, m.get("contamination") or {}
    stderr = {(r["model"], r["task"]): r.get("stderr") for r in m.get("table") or []
              if isinstance(r, dict) and heads.get(r.get("task")) == f"{r.get('metric')},{r.get('filter')}"}
    tasks, models = sorted(heads), list(m.get("models") or scores)
    head = "".join(f'<th data-task="{esc(t)}">{esc(t)}<br><small>{esc(heads[t].split(",")[0])}'
                   f'{" †" if (cont.get(t) or {}).get("matched") else ""}</small></th>' for t in tasks)
    rows = []
    for model in models:
        cells = []
        for t in tasks:
            v = (scores.get(model) or {}).get(t)
            if model in failed:
                cells.append('<td class="failed">failed</td>')
            elif v is None:
                cells.append("<td>–</td>")
            else:
                se = stderr.get((model, t))
                cells.append(f'<td class=num data-value="{v!r}">{fmt_num(v)}'
                             f'{f" ± {fmt_num(se)}" if isinstance(se, (int, float)) else ""}</td>')
        rows.append(f'<tr data-model="{esc(model)}"><th>{esc(model)}</th>{"".join(cells)}</tr>')
    out = [f'<table id="bench-{_slug(stage.name)}" class="grid-table bench"><thead><tr><th>model</th>{head}'
           f'</tr></thead><tbody>{"".join(rows)}</tbody></table>']
    if any((c or {}).get("matched") for c in cont.values()):
        notes = "; ".join(f"{esc(t)}: {c['matched']} of {c['items']} items" for t, c in sorted(cont.items())
                          if c.get("matched"))
        out.append(f'<p class="note">† items found in the curated training corpora: {notes}.</p>')
    charts = []
    for t in tasks:
        bars = [Bar(model, float(scores[model][t])) for model in models
                if model not in failed and isinstance((scores.get(model) or {}).get(t), (int, float))]
        if bars:
            charts.append('<div class=figure>' + bar_chart(
                bars, chart_id=f"bench-{_slug(stage.name)}-{_slug(t)}", title=t,
                x_label=heads[t].split(",")[0], attrs={"data-stage": stage.name, "data-task": t}) + "</div>")
    if charts:
        out.append(f'<div class="charts">{"".join(charts)}</div>')
    return "".join(out)


def benchmarks(run) -> str:
    """The run-level section: every completed eval stage's table and charts (empty when there is none)."""
    parts = [f'<h3><a href="#stage-{_slug(s.name)}">{esc(s.name)}</a></h3>{eval_stage_html(s)}'
             for s in run.stages if s.kind == "eval" and (s.metrics.get("headline"))]
    if not parts:
        return ""
    return ('<section id="benchmarks"><h2>Benchmarks: every model on the same tasks</h2>'
            + "".join(parts) + "</section>")
