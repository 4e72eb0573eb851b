"""The report's align section: the models side by side, unguarded and guarded, with intervals.

Data flow: an align stage's metrics (`table` rows of llmray.safety.evaluate.summarize, `by_harm`,
`answers` of llmray.safety.answers, `gate`) --> three HTML tables:
  safety   model x (unguarded unsafe, guarded unsafe, unguarded over-refusal, guarded over-refusal,
           unseen-category unsafe, gate), each rate with its 95% Wilson interval
  harm     harm category x model (the unseen category marked), unsafe and over-refusal of the model alone
  answers  model x (word F1, distinct-2, degenerate share, mean words) and example answers per model
Cells are formatted by llmray.safety.tables, as `llmray status` prints them. Nothing here reads files.
"""

from __future__ import annotations

from llmray.report.svg import esc
from llmray.safety.tables import ANSWER_COLUMNS, SAFETY_COLUMNS, harm_cell, rate_ci


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _table(ident: str, head: list[str], rows: list[tuple[str, list[str]]], cls: str = "grid-table eval") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join(f'<tr data-row="{esc(key)}">' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
                   for key, cells in rows)
    return f'<table id="{ident}" class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _safety(name: str, m: dict) -> str:
    rows = [r for r in m.get("table") or [] if isinstance(r, dict) and "unsafe_rate" in r]
    if not rows:
        return ""
    gate = m.get("gate") or {}
    out = []
    for r in rows:
        unseen = r.get("unseen")
        cells = [r["stage"]] + [rate_ci(r, k) for _, k in SAFETY_COLUMNS]
        cells.append(f"{rate_ci(unseen, 'unsafe_rate')} / {rate_ci(unseen, 'unsafe_rate_guarded')}"
                     f" ({', '.join(unseen.get('harm') or [])})" if unseen else "–")
        cells.append((gate.get(r["stage"]) or {}).get("status", "–"))
        out.append((r["stage"], cells))
    n = rows[0]
    return (f"<h3>Unsafe and over-refusal rates, the model alone and with the guardrail</h3>"
            f'<p class="note">{n.get("n_harmful")} harmful and {n.get("n_benign")} benign held-out prompts of the '
            f"seen categories; 95% Wilson intervals in brackets; the unseen category (held out of all "
            f"training) apart.</p>"
            + _table(f"align-rates-{_slug(name)}", ["model"] + [t for t, _ in SAFETY_COLUMNS]
                     + ["unseen unsafe (unguarded / guarded)", "gate"], out))


def _harm(name: str, m: dict) -> str:
    by_harm = m.get("by_harm") or {}
    table = [r for r in m.get("table") or [] if isinstance(r, dict)]
    models = [r["stage"] for r in table if r.get("stage") in by_harm] or list(by_harm)
    harms = sorted({h for mod in models for h in by_harm[mod]})
    if not harms:
        return ""
    unseen = {h for r in table for h in ((r.get("unseen") or {}).get("harm") or [])}
    rows = [(h, [h + (" (unseen)" if h in unseen else "")] + [harm_cell(by_harm[mod].get(h)) for mod in models])
            for h in harms]
    return ("<h3>Per harm category (the model alone)</h3>"
            + _table(f"align-harm-{_slug(name)}", ["harm category"] + models, rows))


def _answers(name: str, m: dict) -> str:
    answers = m.get("answers") or {}
    if not answers:
        return ""
    rows = [(mod, [mod] + ["–" if a.get(k) is None else str(a[k]) for _, k in ANSWER_COLUMNS])
            for mod, a in answers.items()]
    n = next(iter(answers.values())).get("n")
    out = ["<h3>Held-out answers: \"what does this function do\"</h3>",
           f'<p class="note">{n} held-out questions, greedy answers with each folder\'s generation config; '
           f"word F1 against the reference answer; degenerate = a word 4-gram repeated.</p>",
           _table(f"align-answers-{_slug(name)}", ["model"] + [t for t, _ in ANSWER_COLUMNS], rows)]
    examples = {mod: a.get("examples") or [] for mod, a in answers.items()}
    prompts = [e["prompt"] for e in max(examples.values(), key=len, default=[])]
    if prompts:
        ex_rows = []
        for i, p in enumerate(prompts):
            ref = next((e["reference"] for ex in examples.values() for e in ex if e["prompt"] == p), "")
            cells = [p, ref] + [next((f"{e['response']} (F1 {e['word_f1']})" for e in ex if e["prompt"] == p), "–")
                                for ex in examples.values()]
            ex_rows.append((str(i), cells))
        out.append(_table(f"align-examples-{_slug(name)}", ["question", "reference"] + list(examples), ex_rows,
                          "grid-table samples"))
    return "".join(out)


def align_stage_html(stage) -> str:
    """An align stage's side-by-side tables (empty for manifests without these figures)."""
    m = stage.metrics
    return _safety(stage.name, m) + _harm(stage.name, m) + _answers(stage.name, m)
