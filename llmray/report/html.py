"""The report page: a `RunView` (from build.py) in, one self-contained HTML document out.

No network: styles and the small script are inline, charts are inline SVG (svg.py). Layout:
a header (run name, stage counts), an overview table of every stage, then one section per stage
(status, kind, fingerprint, elapsed, headline figures, kind-specific charts and tables, every
final metric), then sample answers of every stage to the same prompts side by side. While any
stage is running the page reloads itself every REFRESH_S seconds (meta refresh), keeping the
scroll position. Every element a test or a user may look for has a stable id / data-* attribute:
`#stage-<name>[data-status]`, `[data-metric=<key>][data-value]`, `#chart-<stage>-<group>`,
`#funnel-<stage>`, `#table-<stage>`, `#gate-<stage>[data-gate]`, `#samples`.
"""

from __future__ import annotations

import json
import re

from llmray.report.align import align_stage_html
from llmray.report.benchmarks import benchmarks
from llmray.report.build import TRAINING_KINDS, RunView, StageView
from llmray.report.costs import fixed_costs
from llmray.report.svg import Bar, bar_chart, esc, fmt_num, line_chart

REFRESH_S = 5
SPECIAL_METRICS = {"funnel", "table", "gate", "samples", "table_md", "by_harm", "answers"}  # drawn as charts/tables, not metric rows
TILES = {  # headline figures per kind, shown big at the top of the stage section
    "curate": ["docs_in", "docs_out", "quarantined"],
    "tokenizer": ["vocab_size", "bytes_per_token", "words_per_token", "chars_per_token"],
    "tokenize": ["tokens", "sequences", "seq_len", "vocab_size"],
    "constitution": ["pairs_kept", "sft_records", "calibration_agreement", "revision_preferred", "mean_confidence"],
    "train": [
        "steps",
        "tokens",
        "loss",
        "val_loss",
        "accuracy",
        "val_accuracy",
        "reward_mean",
        "kl",
        "params",
        "elapsed_train_s",
    ],
}
# Chart groups: (group id, title, y label, predicate on the metric name). A series goes to the
# first group that matches; names matching none are listed in the "last logged values" table.
GROUPS = [
    ("loss", "Loss", "loss", lambda k: "loss" in k or k in ("perplexity", "ppl", "val_ppl")),
    ("reward", "Reward", "reward", lambda k: "reward" in k or k in ("score", "margin")),
    ("kl", "KL divergence", "KL", lambda k: k == "kl" or k.startswith("kl_") or k.endswith("_kl")),
    ("accuracy", "Accuracy", "accuracy", lambda k: "acc" in k or "win_rate" in k),
    ("entropy", "Entropy", "entropy", lambda k: "entropy" in k),
    ("length", "Response length", "tokens", lambda k: k.endswith("_len") or "length" in k),
    ("lr", "Learning rate", "lr", lambda k: k in ("lr", "learning_rate")),
    ("grad_norm", "Gradient norm", "norm", lambda k: "grad_norm" in k),
    ("throughput", "Throughput", "per second", lambda k: "per_s" in k or k in ("mfu", "tps")),
]
SECONDARY = {"lr", "grad_norm", "throughput"}
RL_KINDS = ("ppo", "grpo")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def fmt_elapsed(s: float | None) -> str:
    if s is None:
        return "–"
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def badge(stage: StageView) -> str:
    label = "stale" if stage.stale else stage.status
    return f'<span class="badge {esc(label)}" data-status="{esc(stage.status)}">{esc(label)}</span>'


def _value_cell(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f'<td class="num" data-value="{esc(repr(v))}">{fmt_num(v)}</td>'
    if isinstance(v, (dict, list)):
        text = json.dumps(v, default=str)
        text = text if len(text) <= 300 else text[:299] + "…"
        return f'<td data-value="{esc(text)}"><code>{esc(text)}</code></td>'
    return f'<td data-value="{esc(v)}">{esc(v)}</td>'


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for k, v in metrics.items():
        if not prefix and k in SPECIAL_METRICS:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and len(prefix.split(".")) < 3:
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def metrics_table(stage: StageView) -> str:
    rows = _flatten(stage.metrics)
    if not rows:
        return ""
    body = "".join(f'<tr data-metric="{esc(k)}"><th>{esc(k)}</th>{_value_cell(v)}</tr>' for k, v in rows)
    return (
        f'<details class="metrics" open><summary>Final metrics ({len(rows)})</summary>'
        f'<table id="metrics-{slug(stage.name)}" class="kv">{body}</table></details>'
    )


def tiles(stage: StageView) -> str:
    keys = TILES.get("train" if stage.kind in TRAINING_KINDS else stage.kind, [])
    m = stage.metrics
    cells = [
        f'<div class="tile" data-metric="{esc(k)}" data-value="{esc(repr(m[k]))}">'
        f'<div class="tile-v">{fmt_num(m[k])}</div><div class="tile-k">{esc(k.replace("_", " "))}</div></div>'
        for k in keys
        if isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool)
    ]
    return f'<div class="tiles">{"".join(cells)}</div>' if cells else ""


def funnel(stage: StageView) -> str:
    """The curate data funnel: a bar per operator (kept docs, removed ones as a faint ghost) + a table."""
    steps = [f for f in stage.metrics.get("funnel") or [] if isinstance(f, dict)]
    if not steps:
        return ""
    name = slug(stage.name)
    bars = []
    if isinstance(stage.metrics.get("docs_in"), int):
        bars.append(Bar("input", stage.metrics["docs_in"], attrs={"data-op": "input"}))
    rows = []
    for f in steps:
        n_in, n_out, op = f.get("in", 0), f.get("out", 0), str(f.get("op", "?"))
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in (n_in, n_out)):
            continue  # a malformed funnel row must not take the whole page down
        removed = n_in - n_out
        bars.append(
            Bar(
                op,
                n_out,
                ghost=n_in,
                note=f"(−{fmt_num(removed)})" if removed else "",
                attrs={"data-op": op, "data-in": n_in, "data-out": n_out},
            )
        )
        kept = f"{100 * n_out / n_in:.1f}%" if n_in else "–"
        rows.append(
            f'<tr data-op="{esc(op)}"><td>{esc(op)}</td><td class="num" data-col="in">{fmt_num(n_in)}</td>'
            f'<td class="num" data-col="out">{fmt_num(n_out)}</td>'
            f'<td class="num" data-col="removed">{fmt_num(removed)}</td><td class="num">{kept}</td>'
            f"{_rejected_cell(stage, op)}</tr>"
        )
    chart = bar_chart(
        bars,
        chart_id=f"funnel-{name}",
        title="Data funnel: documents kept after each operator",
        x_label="documents",
        attrs={"data-stage": stage.name},
    )
    table = (
        f'<table id="funnel-table-{name}" class="grid-table"><thead><tr><th>operator</th><th>in</th>'
        f"<th>out</th><th>removed</th><th>kept</th><th>removed, for example</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    note = '<p class="note">Blue: documents an operator kept; pale red: what it removed.</p>'
    return f'<div class="figure">{chart}</div>{note}{table}'


def _rejected_cell(stage: StageView, op: str) -> str:
    samples = stage.rejected.get(op) or []
    texts = []
    for rec in samples:
        text = str(rec.get("text", rec.get("reason", json.dumps(rec, default=str))))
        texts.append(f"<li>{esc(text[:160] + ('…' if len(text) > 160 else ''))}</li>")
    return f'<td class="rejected"><ul>{"".join(texts)}</ul></td>' if texts else "<td></td>"


def _group_series(stage: StageView) -> tuple[list[tuple[str, str, str, dict]], dict]:
    grouped: dict[str, dict] = {}
    other: dict = {}
    for key, pts in stage.series.items():
        for gid, _title, _yl, match in GROUPS:
            if match(key):
                grouped.setdefault(gid, {})[key] = pts
                break
        else:
            other[key] = pts[-1][1]
    order = [g for g in GROUPS if g[0] in grouped]
    if stage.kind in RL_KINDS:  # RL runs are read by their reward and KL curves first
        order.sort(key=lambda g: (g[0] != "reward", g[0] != "kl"))
    return [(gid, title, yl, grouped[gid]) for gid, title, yl, _ in order], other


def charts(stage: StageView) -> str:
    if not stage.series:
        return ""
    groups, other = _group_series(stage)
    name = slug(stage.name)
    figs = {
        gid: line_chart(
            series,
            chart_id=f"chart-{name}-{gid}",
            title=f"{title} vs {stage.x_key}",
            x_label=stage.x_key,
            y_label=yl,
            attrs={"data-stage": stage.name, "data-group": gid},
        )
        for gid, title, yl, series in groups
    }
    main = "".join(f"<div class=figure>{f}</div>" for g, f in figs.items() if g not in SECONDARY)
    more = "".join(f"<div class=figure>{f}</div>" for g, f in figs.items() if g in SECONDARY)
    out = f'<div class="charts">{main}</div>' if main else ""
    if more:  # optimizer health and speed: useful when debugging, folded away otherwise
        out += (
            f'<details class="more-charts"><summary>Learning rate, gradient norm, throughput</summary>'
            f'<div class="charts">{more}</div></details>'
        )
    if other:
        rows = "".join(
            f'<tr data-metric="{esc(k)}"><th>{esc(k)}</th>{_value_cell(v)}</tr>' for k, v in other.items()
        )
        out += (
            f'<details class="metrics"><summary>Other logged series (last value)</summary>'
            f'<table class="kv">{rows}</table></details>'
        )
    return out + f'<p class="note">{stage.records:,} records in metrics.jsonl</p>'


def _gates(gate) -> list[tuple[str, str, list]]:
    """(model label, status, reasons) from an align gate: one gate `{status, reasons}` or one per model
    (`{model: {status, reasons}}`, what the align stage writes)."""
    if not isinstance(gate, dict):
        return []
    if "status" in gate:
        return [("", str(gate["status"]), list(gate.get("reasons") or []))]
    return [(str(k), str(v.get("status", "?")), list(v.get("reasons") or []))
            for k, v in gate.items() if isinstance(v, dict)]


def eval_table(stage: StageView) -> str:
    """align: the evaluation/safety table (`metrics.table`, a list of row dicts) and the gate; eval: the
    benchmark table and charts (llmray.report.benchmarks)."""
    if stage.kind == "eval":
        from llmray.report.benchmarks import eval_stage_html

        return eval_stage_html(stage)
    out = []
    for label, status, reasons in _gates(stage.metrics.get("gate")):
        items = "".join(f"<li>{esc(r)}</li>" for r in reasons)
        ident = slug(stage.name) + (f"-{slug(label)}" if label else "")
        title = f"Gate{f' ({esc(label)})' if label else ''}: {esc(status)}"
        out.append(
            f'<div id="gate-{ident}" class="gate {esc(status)}" data-gate="{esc(status)}">'
            f"<strong>{title}</strong>{f'<ul>{items}</ul>' if items else ''}</div>"
        )
    rows = [r for r in stage.metrics.get("table") or [] if isinstance(r, dict)]
    if rows:
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        head = "".join(f'<th data-col="{esc(c)}">{esc(c)}</th>' for c in cols)
        body = "".join(
            "<tr>" + "".join(_value_cell(r[c]) if c in r else "<td></td>" for c in cols) + "</tr>"
            for r in rows
        )
        table = (
            f'<table id="table-{slug(stage.name)}" class="grid-table eval"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )
        # An align stage's side-by-side tables come first; its full rows (every judge, interval,
        # timing) stay one click away.
        side = align_stage_html(stage) if stage.kind == "align" else ""
        out.append(f"{side}<details><summary>All figures</summary>{table}</details>" if side else table)
    return "".join(out)


def stage_section(stage: StageView) -> str:
    m = stage.manifest
    name = slug(stage.name)
    inputs = ", ".join(f'<a href="#stage-{slug(i)}">{esc(i)}</a>' for i in (m.get("inputs") or {}))
    meta = [
        f"kind <b>{esc(stage.kind)}</b>",
        f'fingerprint <code data-field="fingerprint">{esc((m.get("fingerprint") or "–")[:12])}</code>',
        f'elapsed <span data-field="elapsed">{fmt_elapsed(stage.elapsed_s)}</span>',
    ]
    if inputs:
        meta.append(f"reads {inputs}")
    if m.get("finished"):
        meta.append(f"finished {esc(m['finished'])}")
    elif m.get("started"):
        meta.append(f"started {esc(m['started'])}")
    parts = [
        (
            f'<section class="stage" id="stage-{name}" data-stage="{esc(stage.name)}" '
            f'data-kind="{esc(stage.kind)}" '
            f'data-status="{esc(stage.status)}"><h2>{esc(stage.name)} {badge(stage)}</h2>'
            f'<p class="meta">{" · ".join(meta)}</p>'
        )
    ]
    if stage.stale:
        parts.append('<p class="warn">The config changed since this ran: `llmray run` will redo it.</p>')
    if stage.status == "pending":
        parts.append('<p class="note">Not run yet.</p>')
    if m.get("error"):
        parts.append(f'<pre class="error" data-field="error">{esc(m["error"])}</pre>')
    parts += [tiles(stage), funnel(stage), charts(stage), eval_table(stage), metrics_table(stage)]
    if stage.log_tail:
        parts.append(
            f'<details class="log" open><summary>log (last lines)</summary>'
            f"<pre>{esc(stage.log_tail)}</pre></details>"
        )
    parts.append("</section>")
    return "".join(parts)


HEADLINE = {
    "tokenizer": ("vocab_size",),
    "tokenize": ("tokens", "sequences"),
    "constitution": ("pairs_kept",),
    "train": ("val_loss", "loss", "reward_mean", "accuracy"),
}


def _headline(stage: StageView) -> str:
    """A few words for the overview table: what the stage achieved."""
    m = stage.metrics
    if stage.kind == "curate" and "docs_in" in m:
        return f"{fmt_num(m.get('docs_out', 0))} of {fmt_num(m['docs_in'])} docs kept"
    gates = _gates(m.get("gate"))
    if gates:
        return ", ".join(f"{label + ' ' if label else ''}{status}" for label, status, _ in gates)
    keys = HEADLINE.get(
        "train" if stage.kind in TRAINING_KINDS else stage.kind, ("vocab_size", "tokens", "loss")
    )
    for key in keys:
        if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool):
            return f"{key.replace('_', ' ')} {fmt_num(m[key])}"
    if stage.series:  # running: the latest logged value
        key = next((k for k in keys if k in stage.series), next(iter(stage.series)))
        x, y = stage.series[key][-1]
        return f"{key.replace('_', ' ')} {fmt_num(y)} ({stage.x_key} {fmt_num(x)})"
    return ""


def overview(run: RunView) -> str:
    rows = "".join(
        f'<tr data-stage="{esc(s.name)}"><td><a href="#stage-{slug(s.name)}">{esc(s.name)}</a></td>'
        f"<td>{esc(s.kind)}</td><td>{badge(s)}</td><td class=num>{fmt_elapsed(s.elapsed_s)}</td>"
        f"<td><code>{esc((s.manifest.get('fingerprint') or '–')[:12])}</code></td>"
        f"<td>{esc(_headline(s))}</td></tr>"
        for s in run.stages
    )
    return (
        f'<table id="overview" class="grid-table"><thead><tr><th>stage</th><th>kind</th><th>status</th>'
        f"<th>elapsed</th><th>fingerprint</th><th>result</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def sample_answer(x: dict) -> str:
    """A stage's answer in its `samples`: `response` (ppo, align) or `after` (sft: the tuned model)."""
    return str(x.get("response", x.get("after", "")))


def sample_column(stage: str, x: dict) -> str:
    """The column of a sample: its stage, or `<align stage>:<model>` for an align stage's samples of
    the models it red-teamed."""
    model = x.get("stage")
    return f"{stage}:{model}" if model and model != stage else stage


def samples(run: RunView) -> str:
    """Answers of every stage to the same prompts: one row per prompt, one column per stage."""
    by_stage: dict[str, dict[str, str]] = {}
    for s in run.stages:
        for x in s.metrics.get("samples") or []:
            if isinstance(x, dict):
                by_stage.setdefault(sample_column(s.name, x), {})[str(x.get("prompt"))] = sample_answer(x)
    by_stage = {k: v for k, v in by_stage.items() if v}
    if not by_stage:
        return ""
    prompts: list[str] = []
    for answers in by_stage.values():
        prompts.extend(p for p in answers if p not in prompts)
    head = "".join(f'<th data-stage="{esc(s)}">{esc(s)}</th>' for s in by_stage)
    body = []
    for i, p in enumerate(prompts):
        cells = "".join(
            f'<td data-stage="{esc(s)}"><div class="answer">{esc(a.get(p, "–")[:2000])}</div></td>'
            for s, a in by_stage.items()
        )
        body.append(f'<tr data-prompt-index="{i}"><th class="prompt">{esc(p)}</th>{cells}</tr>')
    return (
        f'<section id="samples"><h2>Same prompts, every stage</h2><div class="scroll">'
        f'<table class="grid-table samples"><thead><tr><th>prompt</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


def promotions(run: RunView) -> str:
    """Who put which version behind which served name, when and why (<run>/promotions.json, written by
    the server: llmray.serve.versions)."""
    try:
        events = json.loads((run.run_dir / "promotions.json").read_text())
    except (OSError, ValueError):
        return ""
    cells = ("time", "name", "event", "from", "to", "outcome", "who", "why")
    rows = "".join("<tr>" + "".join(f"<td>{esc(str(e.get(k, '')))}</td>" for k in cells) + "</tr>"
                   for e in reversed(events[-50:]))
    head = "".join(f"<th>{k}</th>" for k in cells)
    return (f'<h2 id="promotions">Promotions</h2><table id="promotions-table" class="grid-table">'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")


def _nav(run: RunView, playground: str) -> str:
    links = ['<a href="#playground">Playground</a>'] if playground else []
    links.append('<a href="#overview">Stages</a>')
    if any(s.metrics.get("samples") for s in run.stages):
        links.append('<a href="#samples">Sample answers</a>')
    return f"<nav>{' · '.join(links)}</nav>"


def render_page(run: RunView, playground: str = "") -> str:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(run.counts().items()))
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if run.running else ""
    live = (
        f'<p class="live">A stage is running: this page reloads every {REFRESH_S} s.</p>'
        if run.running
        else ""
    )
    body = (
        "".join(stage_section(s) for s in run.stages)
        or '<p class="note">No stages found in this run directory.</p>'
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
        f"<title>llmray · {esc(run.name)}</title><style>{CSS}</style></head>"
        f'<body data-run="{esc(run.name)}" data-running="{int(run.running)}">'
        f"<header><h1>llmray run report: {esc(run.name)}</h1>"
        f'<p class="meta"><code>{esc(run.run_dir)}</code> · {esc(counts or "no stages")} · '
        f"generated {esc(run.generated)}</p>{live}{_nav(run, playground)}</header><main>{playground}"
        f"<h2>Stages</h2>{overview(run)}{fixed_costs(run)}{benchmarks(run)}{body}{samples(run)}{promotions(run)}</main><div id=tip hidden></div>"
        f"<script>{SCRIPT}</script></body></html>"
    )


CSS = """
:root{--fg:#1f2937;--mut:#6b7280;--bd:#e5e7eb;--bg:#fff;--card:#f9fafb}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{padding:16px 24px;border-bottom:1px solid var(--bd);background:var(--card)}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:20px 0 8px}
main{padding:0 24px 40px;max-width:1400px}
.meta{color:var(--mut);margin:2px 0}.note{color:var(--mut)}.live{color:#1d4ed8;font-weight:600;margin:4px 0}
code{font:12px ui-monospace,Menlo,Consolas,monospace}
.stage{border:1px solid var(--bd);border-radius:8px;padding:4px 16px 12px;margin:16px 0;background:var(--bg)}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:1px 8px;border-radius:10px;
vertical-align:middle;
background:#e5e7eb;color:#374151}.badge.completed{background:#dcfce7;color:#166534}
.badge.running{background:#dbeafe;color:#1e40af}.badge.failed{background:#fee2e2;color:#991b1b}
.badge.stale{background:#fef3c7;color:#92400e}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}.tile{border:1px solid var(--bd);border-radius:6px;
padding:6px 12px;min-width:110px;background:var(--card)}.tile-v{font-size:20px;font-weight:600}
.tile-k{color:var(--mut);font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.figure{max-width:100%;overflow-x:auto}
svg.chart{background:#fff;border:1px solid var(--bd);border-radius:6px;max-width:100%;height:auto}
svg .grid{stroke:#eef0f3}svg .axis{stroke:#9ca3af}svg .tick{font-size:11px;fill:#6b7280}
svg .axis-label{font-size:12px;fill:#374151}svg .chart-title{font-size:14px;font-weight:600;fill:#111827}
svg .legend{font-size:12px;fill:#374151}svg .bar-label,svg .bar-value{font-size:12px;fill:#374151}
svg .bar-ghost{fill:#fecaca}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid var(--bd);padding:3px 8px;text-align:left;
vertical-align:top}thead th{background:var(--card)}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{font-weight:500;color:#374151;background:var(--card)}td.rejected ul{margin:0;padding-left:16px;
color:var(--mut);font-size:12px;max-width:520px}
.gate{display:inline-block;padding:6px 12px;border-radius:6px;margin:8px 0}.gate.passed{background:#dcfce7}
.gate.blocked{background:#fee2e2}.gate ul{margin:4px 0 0;padding-left:18px}
pre{background:#f3f4f6;padding:8px;border-radius:6px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
pre.error{background:#fee2e2;color:#7f1d1d}.warn{color:#92400e}
.samples .answer{white-space:pre-wrap;max-width:360px;font-size:13px}.samples th.prompt{max-width:260px}
.scroll{overflow-x:auto}summary{cursor:pointer;color:#374151;margin:6px 0}
#tip{position:fixed;pointer-events:none;background:#111827;color:#fff;font-size:12px;padding:4px 8px;
border-radius:4px;white-space:pre;z-index:10}
"""

# Progressive enhancement only: the page reads fine without it. Hovering a line chart shows the
# nearest logged values; the scroll position survives the auto-refresh; `data-ready` on <html>
# tells a headless browser test that the script ran to the end without an error.
SCRIPT = """
(function(){
  var tip=document.getElementById('tip');
  document.querySelectorAll('svg.chart[data-chart=line]').forEach(function(svg){
    var p=svg.dataset.plot.split(',').map(Number),x0=+svg.dataset.x0,x1=+svg.dataset.x1;
    var series=[].map.call(svg.querySelectorAll('g.series'),function(g){
      return {name:g.dataset.series,pts:JSON.parse(g.dataset.points)};});
    svg.addEventListener('mousemove',function(ev){
      var r=svg.getBoundingClientRect(),vb=svg.viewBox.baseVal,sx=(ev.clientX-r.left)*vb.width/r.width;
      var x=x0+(sx-p[0])/p[2]*(x1-x0),lines=[];
      series.forEach(function(s){var best=null;s.pts.forEach(function(q){
        if(best===null||Math.abs(q[0]-x)<Math.abs(best[0]-x))best=q;});
        if(best)lines.push(s.name+' @ '+best[0]+': '+(+best[1].toPrecision(5)));});
      tip.textContent=lines.join('\\n');tip.hidden=!lines.length;
      tip.style.left=(ev.clientX+12)+'px';tip.style.top=(ev.clientY+12)+'px';});
    svg.addEventListener('mouseleave',function(){tip.hidden=true;});
  });
  var key='llmray-scroll:'+location.pathname;
  if(document.body.dataset.running==='1'){
    try{var y=sessionStorage.getItem(key);if(y)window.scrollTo(0,+y);}catch(e){}
    window.addEventListener('beforeunload',function(){try{sessionStorage.setItem(key,window.scrollY);}catch(e){}});
  }
  document.documentElement.dataset.ready='1';
})();
"""
