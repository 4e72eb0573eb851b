"""The report's fixed-cost table: every stage's time outside its measured work, side by side.

Data flow: each stage's manifest `metrics.fixed_cost` ({startup_s, data_s, eval_s, checkpoint_s, export_s,
work_s, wall_s, other_s}; written by the training kinds through `llmray.train.loop.fit`, by ppo/grpo, and by
every other kind through `llmray.stages.base.FixedCost` work spans) --> one row per stage that has one, and a
total row: fixed = wall - work, the figure issue 24 tracks, so a regression in start-up, evaluation or export
shows next to the stage that paid it. Nothing here reads files: the views carry the manifests.
"""

from __future__ import annotations

from llmray.report.svg import esc, fmt_num

PHASES = ("startup_s", "data_s", "eval_s", "checkpoint_s", "export_s", "other_s")


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fixed_cost_rows(run) -> list[tuple[str, dict]]:
    """(stage name, {phase: seconds, "fixed_s", "work_s", "wall_s"}) for stages reporting a fixed cost."""
    rows = []
    for s in run.stages:
        fc = s.metrics.get("fixed_cost")
        if not isinstance(fc, dict) or _num(fc.get("wall_s")) is None:
            continue
        row = {k: _num(fc.get(k)) for k in (*PHASES, "work_s", "wall_s")}
        row["fixed_s"] = row["wall_s"] - row["work_s"] if row["work_s"] is not None else None
        rows.append((s.name, row))
    return rows


def fixed_costs(run) -> str:
    """The #fixed-costs table ('' when no stage reports one)."""
    rows = fixed_cost_rows(run)
    if not rows:
        return ""
    cols = (*PHASES, "fixed_s", "work_s", "wall_s")
    total = {c: sum(r[c] for _, r in rows if r[c] is not None) for c in cols}

    def cells(row: dict) -> str:
        return "".join(f'<td class="num" data-col="{c}" data-value="{esc(repr(row[c]))}">'
                       f'{"–" if row[c] is None else fmt_num(round(row[c], 1))}</td>' for c in cols)

    body = "".join(f'<tr data-stage="{esc(name)}"><td>{esc(name)}</td>{cells(row)}</tr>' for name, row in rows)
    body += f'<tr data-stage="total"><th>total</th>{cells(total)}</tr>'
    head = "".join(f"<th>{c[:-2].replace('_', ' ')}</th>" for c in cols)
    return ('<h2 id="fixed-costs-title">Fixed costs (seconds outside the measured work)</h2>'
            f'<table id="fixed-costs" class="grid-table"><thead><tr><th>stage</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")
