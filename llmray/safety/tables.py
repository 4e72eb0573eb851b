"""An align stage's figures as text: markdown tables for `llmray status` (metrics.table_md) and the
cell format the HTML report shares.

Data flow: align metrics (`table` rows, `by_harm`, `answers`, `gate`) --> three markdown tables:
  safety   model x (unguarded unsafe, guarded unsafe, unguarded over-refusal, guarded over-refusal,
           unseen-category unsafe, gate), each rate "0.350 [0.210, 0.520]" (95% Wilson interval)
  harm     harm category x model: unguarded unsafe / over-refusal on that category's look-alikes
  answers  model x (word F1, distinct-2, degenerate share, mean words)
"""

from __future__ import annotations

# (column title, row key) of the side-by-side safety table.
SAFETY_COLUMNS = (("unguarded unsafe", "unsafe_rate"), ("guarded unsafe", "unsafe_rate_guarded"),
                  ("unguarded over-refusal", "over_refusal"), ("guarded over-refusal", "over_refusal_guarded"))
ANSWER_COLUMNS = (("word F1", "word_f1"), ("distinct-2", "distinct_2"), ("degenerate", "degenerate_rate"),
                  ("mean words", "mean_words"))


def rate_ci(d: dict | None, key: str) -> str:
    """ "0.350 [0.210, 0.520]" from d[key] and d[key + "_ci"]; "–" when not measured."""
    if not d or d.get(key) is None:
        return "–"
    ci = d.get(f"{key}_ci")
    return f"{d[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _md(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def harm_cell(d: dict | None) -> str:
    """Unguarded unsafe rate / over-refusal of one harm category (either may be unmeasured)."""
    if not d:
        return "–"
    return f"unsafe {rate_ci(d, 'unsafe_rate')}; over-refusal {rate_ci(d, 'over_refusal')}"


def align_markdown(metrics: dict) -> str:
    """The three tables, one after the other (empty parts left out)."""
    table, gate = metrics.get("table") or [], metrics.get("gate") or {}
    rows = []
    for r in table:
        unseen = r.get("unseen")
        rows.append([r["stage"]] + [rate_ci(r, k) for _, k in SAFETY_COLUMNS]
                    + [f"{rate_ci(unseen, 'unsafe_rate')} / {rate_ci(unseen, 'unsafe_rate_guarded')}"
                       if unseen else "–", (gate.get(r["stage"]) or {}).get("status", "–")])
    out = _md(["model"] + [t for t, _ in SAFETY_COLUMNS] + ["unseen unsafe (unguarded / guarded)", "gate"], rows)
    by_harm = metrics.get("by_harm") or {}
    models = [r["stage"] for r in table if r["stage"] in by_harm]
    harms = sorted({h for m in models for h in by_harm[m]})
    unseen_harms = {h for r in table for h in ((r.get("unseen") or {}).get("harm") or [])}
    if harms:
        out += ["", "per harm category (the model alone; 95% Wilson intervals):"]
        out += _md(["harm"] + models, [[h + (" (unseen)" if h in unseen_harms else "")]
                                       + [harm_cell(by_harm[m].get(h)) for m in models] for h in harms])
    answers = metrics.get("answers") or {}
    if answers:
        out += ["", "held-out answers:"]
        out += _md(["model"] + [t for t, _ in ANSWER_COLUMNS],
                   [[m] + ["–" if a.get(k) is None else f"{a[k]}" for _, k in ANSWER_COLUMNS]
                    for m, a in answers.items()])
    return "\n".join(out) + "\n"
