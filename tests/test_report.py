"""The run report (`llmray report`): built from a realistic run directory, checked as HTML and in a
real headless Chromium (test_report_browser.py).

The run directory is written here by hand, following the contract in ARCHITECTURE.md (manifests,
curate funnel, metrics.jsonl of every training kind, an align table and gate, sample answers), so
these tests need neither Ray nor trained models and stay fast. Chromium tests fail (not skip) when
the browser is missing: CI installs it (`apt-get install -y chromium`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import yaml

from llmray.report import render_report
from llmray.report.build import collect, series_from_records
from llmray.report.svg import Axis, fmt_num

# ----------------------------------------------------------------- a realistic run directory

FUNNEL = [
    {"op": "normalize", "in": 1193, "out": 1193},
    {"op": "length", "in": 1193, "out": 1050},
    {"op": "language", "in": 1050, "out": 990},
    {"op": "exact_dedup", "in": 990, "out": 940},
    {"op": "minhash_dedup", "in": 940, "out": 871},
    {"op": "quality", "in": 871, "out": 812},
]
PROMPTS = ["What does `zip` do?", "Write a haiku about tests."]
STAGES = {  # name -> (kind, inputs)
    "corpus": ("curate", []),
    "tok": ("tokenizer", ["corpus"]),
    "tokens": ("tokenize", ["corpus", "tok"]),
    "base": ("pretrain", ["tokens"]),
    "chat": ("sft", ["base"]),
    "rm": ("reward", ["chat"]),
    "dpo": ("dpo", ["chat"]),
    "ppo": ("ppo", ["chat", "rm"]),
    "grpo": ("grpo", ["chat", "rm"]),
    "safety": ("align", ["chat", "dpo", "ppo"]),
    "later": ("sft", ["safety"]),
}


def _manifest(d: Path, name: str, status: str = "completed", metrics: dict | None = None, **extra) -> dict:
    kind, inputs = STAGES[name]
    man = {
        "name": name,
        "kind": kind,
        "fingerprint": f"{abs(hash(name)):020d}"[:20],
        "status": status,
        "started": "2025-01-01T10:00:00+00:00",
        "finished": None if status == "running" else "2025-01-01T10:01:05+00:00",
        "inputs": {i: "f" * 20 for i in inputs},
        "metrics": metrics or {},
        "outputs": {"model": "model"} if kind in ("pretrain", "sft", "reward", "dpo", "ppo") else {},
    }
    if status != "running":
        man["elapsed_s"] = 65.2
    else:  # started 95 s ago: the page shows a live elapsed time
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=95)
        man["started"] = start.isoformat(timespec="seconds")
    man.update(extra)
    (d / name).mkdir(parents=True, exist_ok=True)
    (d / name / "manifest.json").write_text(json.dumps(man, indent=2))
    return man


def _jsonl(path: Path, records: list[dict], torn_tail: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text + ('{"step": 99, "lo' if torn_tail else ""))  # a writer caught mid-append


def _lm_records(steps: int, start: float, end: float, val_every: int) -> list[dict]:
    out = []
    for s in range(10, steps + 1, 10):
        loss = end + (start - end) * math.exp(-s / (steps / 4))
        rec = {
            "step": s,
            "loss": round(loss, 4),
            "lr": 3e-4 * min(1, s / 50),
            "grad_norm": 1.5 - s / steps,
            "tokens_per_s": 5000 + s,
            "time": 1.0 * s,
        }
        if s % val_every == 0:
            rec["val_loss"] = round(loss + 0.15, 4)
        out.append(rec)
    return out


def build_run(root: Path, running: bool = True) -> Path:
    """A quickstart-like run: every kind completed, grpo running (or completed), `later` pending."""
    run = root / "quickstart"
    run.mkdir(parents=True)
    resolved = {
        "name": "quickstart",
        "workdir": str(root),
        "stages": {n: {"kind": k, **({"data": i[0]} if i else {})} for n, (k, i) in STAGES.items()},
    }
    (run / "pipeline.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    _manifest(
        run,
        "corpus",
        metrics={
            "docs_in": 1200,
            "docs_out": 812,
            "quarantined": 7,
            "funnel": FUNNEL,
            "bytes_out": 2_345_678,
        },
    )
    _jsonl(run / "corpus" / "rejected" / "length.jsonl", [{"id": "a1", "text": "too short"}])
    _manifest(run, "tok", metrics={"vocab_size": 4096, "bytes_per_token": 3.71, "words_per_token": 0.62})
    _manifest(
        run,
        "tokens",
        metrics={
            "tokens": 1_234_567,
            "sequences": 4822,
            "seq_len": 256,
            "vocab_size": 4096,
            "train": {"sequences": 4580},
            "val": {"sequences": 242},
        },
    )
    samples = {
        s: [{"prompt": p, "response": f"[{s}] answer {i}"} for i, p in enumerate(PROMPTS)]
        for s in ("base", "chat", "dpo", "ppo")
    }
    for name, start, end in (("base", 8.3, 4.1), ("chat", 4.0, 2.2)):
        recs = _lm_records(200, start, end, 50)
        _jsonl(run / name / "metrics.jsonl", recs)
        _manifest(
            run,
            name,
            metrics={
                "steps": 200,
                "loss": recs[-1]["loss"],
                "val_loss": recs[-1]["val_loss"],
                "tokens": 409_600,
                "samples": samples[name],
            },
        )
    _jsonl(
        run / "rm" / "metrics.jsonl",
        [{"step": s, "loss": 0.69 - s / 400, "accuracy": 0.5 + s / 500} for s in range(5, 101, 5)],
    )
    _manifest(run, "rm", metrics={"loss": 0.44, "accuracy": 0.7, "val_accuracy": 0.66})
    _jsonl(
        run / "dpo" / "metrics.jsonl",
        [
            {"step": s, "loss": 0.69 - s / 300, "reward_margin": s / 100, "accuracy": 0.5 + s / 300}
            for s in range(1, 61)
        ],
    )
    _manifest(run, "dpo", metrics={"loss": 0.49, "accuracy": 0.7, "samples": samples["dpo"]})
    ppo = [
        {
            "iteration": i,
            "reward_mean": -1 + 0.1 * i,
            "kl": 0.002 * i * i,
            "policy_loss": 0.1 / i,
            "response_len": 40 + i,
        }
        for i in range(1, 21)
    ]
    _jsonl(run / "ppo" / "metrics.jsonl", ppo)
    _manifest(
        run,
        "ppo",
        metrics={
            "iterations": 20,
            "reward_mean": ppo[-1]["reward_mean"],
            "kl": ppo[-1]["kl"],
            "samples": samples["ppo"],
        },
    )
    grpo = [{"iteration": i, "reward_mean": 0.05 * i, "kl": 0.01 * i} for i in range(1, 8)]
    if running:
        _manifest(run, "grpo", status="running")
        _jsonl(run / ".staging" / "grpo" / "metrics.jsonl", grpo, torn_tail=True)
        (run / ".staging" / "grpo" / "log.txt").write_text("INFO iteration 7 reward 0.35\n")
    else:
        _jsonl(run / "grpo" / "metrics.jsonl", grpo)
        _manifest(run, "grpo", metrics={"reward_mean": 0.35})
    table = [
        {"model": m, "helpfulness": h, "refusal_rate": r, "toxicity": t}
        for m, h, r, t in (("chat", 0.61, 0.40, 0.03), ("dpo", 0.70, 0.88, 0.01), ("ppo", 0.66, 0.91, 0.02))
    ]
    _manifest(
        run,
        "safety",
        status="failed",
        error="GateBlocked: chat refusal_rate 0.40 < 0.8",
        metrics={"table": table, "gate": {"status": "blocked", "reasons": ["chat: refusal_rate 0.40 < 0.8"]}},
    )
    (run / "safety" / "log.txt").write_text("INFO evaluating\nERROR gate blocked\n")
    return run


# ----------------------------------------------------------------- a tiny DOM for assertions


class Node:
    def __init__(self, tag: str, attrs: dict, parent=None):
        self.tag, self.attrs, self.parent, self.children, self.text_parts = tag, attrs, parent, [], []

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str | None = None, **attrs) -> list[Node]:
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and all(n.attrs.get(k) == v if v is not True else k in n.attrs for k, v in want.items())
        ]

    def find(self, tag: str | None = None, **attrs) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}> in the page"
        return found[0]

    @property
    def text(self) -> str:
        return "".join(self.text_parts + [c.text for c in self.children]).strip()


class _Parser(HTMLParser):
    VOID: ClassVar[set[str]] = {
        "meta",
        "link",
        "br",
        "input",
        "img",
        "hr",
        "rect",
        "line",
        "circle",
        "polyline",
        "path",
    }

    def __init__(self):
        super().__init__()
        self.root = self.cur = Node("#root", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.text_parts.append(data)


def parse(html_text: str) -> Node:
    p = _Parser()
    p.feed(html_text)
    return p.root


def num(text: str) -> float:
    return float(text.replace(",", "").split()[0])


# ----------------------------------------------------------------- unit tests (no browser)


def test_axis_ticks_are_nice_and_cover_the_data():
    ax = Axis.fit([0.37, 8.3], 0, 100)
    assert ax.lo <= 0.37 and ax.hi >= 8.3
    steps = {round(b - a, 9) for a, b in zip(ax.ticks, ax.ticks[1:])}
    assert steps == {2.0}
    assert ax(ax.lo) == 0 and ax(ax.hi) == 100
    flat = Axis.fit([5.0, 5.0], 0, 10)  # a flat series still gets a range
    assert flat.lo < 5.0 < flat.hi
    assert fmt_num(1234567) == "1,234,567" and fmt_num(0.12345) == "0.1235"


def test_series_keep_sparse_keys_and_pick_the_x_axis():
    recs = [
        {"step": 10, "loss": 3.0},
        {"step": 20, "loss": 2.5, "val_loss": 2.9},
        {"step": 30, "loss": 2.0, "note": "x", "ok": True},
    ]
    x, s = series_from_records(recs)
    assert x == "step"
    assert s["loss"] == [(10, 3.0), (20, 2.5), (30, 2.0)]
    assert s["val_loss"] == [(20, 2.9)]
    assert "note" not in s and "ok" not in s  # strings and booleans are not curves
    x, s = series_from_records([{"iteration": 1, "kl": 0.1}])
    assert x == "iteration" and s == {"kl": [(1.0, 0.1)]}


def test_report_shows_every_stage_and_the_run_numbers(tmp_path):
    run = build_run(tmp_path)
    page = render_report(run)
    doc = parse(page)
    # stages in file order with their status; the running one makes the page refresh itself
    sections = doc.find_all("section", **{"class": "stage"})
    assert [s.attrs["data-stage"] for s in sections] == list(STAGES)
    status = {s.attrs["data-stage"]: s.attrs["data-status"] for s in sections}
    assert status["grpo"] == "running" and status["safety"] == "failed" and status["later"] == "pending"
    assert doc.find("meta", http_equiv="refresh").attrs["content"] == "5"
    # funnel bars and table equal the manifest
    funnel = doc.find("svg", id="funnel-corpus")
    bars = {b.attrs["data-op"]: b for b in funnel.find_all("g", **{"class": "bar"})}
    assert int(float(bars["input"].attrs["data-value"])) == 1200
    for f in FUNNEL:
        assert (int(bars[f["op"]].attrs["data-in"]), int(bars[f["op"]].attrs["data-out"])) == (
            f["in"],
            f["out"],
        )
        row = doc.find("table", id="funnel-table-corpus").find("tr", data_op=f["op"])
        assert num(row.find("td", data_col="out").text) == f["out"]
    assert "too short" in doc.find("table", id="funnel-table-corpus").text  # rejected sample shown
    corpus = doc.find("section", id="stage-corpus")
    assert num(corpus.find("div", data_metric="quarantined").find("div", **{"class": "tile-v"}).text) == 7
    tokens = doc.find("section", id="stage-tokens")
    assert num(tokens.find("div", data_metric="tokens").find("div", **{"class": "tile-v"}).text) == 1_234_567
    assert num(tokens.find("tr", data_metric="train.sequences").find("td").text) == 4580
    # loss curves: train and (sparser) val loss; RL: reward and KL vs iteration, shown first
    base = doc.find("svg", id="chart-base-loss")
    series = {g.attrs["data-series"]: g for g in base.find_all("g", **{"class": "series"})}
    assert set(series) == {"loss", "val_loss"}
    assert int(series["loss"].attrs["data-n"]) == 20 and int(series["val_loss"].attrs["data-n"]) == 4
    base_man = json.loads((run / "base" / "manifest.json").read_text())
    assert float(series["loss"].attrs["data-last"]) == base_man["metrics"]["loss"]
    assert base.find("text", **{"class": "axis-label x-label"}).text == "step"
    ppo_charts = [c.attrs["data-group"] for c in doc.find("section", id="stage-ppo").find_all("svg")]
    assert ppo_charts[:2] == ["reward", "kl"] and "loss" in ppo_charts and "length" in ppo_charts
    grpo = doc.find("svg", id="chart-grpo-reward")  # live curve from the staging folder, torn line skipped
    assert int(grpo.find("g", data_series="reward_mean", **{"class": "series"}).attrs["data-n"]) == 7
    # align: evaluation table and blocked gate; failure shown with its error and log
    assert doc.find("div", id="gate-safety").attrs["data-gate"] == "blocked"
    table = doc.find("table", id="table-safety")
    assert [r.find_all("td")[0].text for r in table.find_all("tr")[1:]] == ["chat", "dpo", "ppo"]
    assert "GateBlocked" in doc.find("section", id="stage-safety").find("pre", data_field="error").text
    # samples: every stage's answer to the same prompt, side by side
    samples = doc.find("section", id="samples")
    first = samples.find("tr", data_prompt_index="0")
    assert [td.text for td in first.find_all("td")] == [
        f"[{s}] answer 0" for s in ("base", "chat", "dpo", "ppo")
    ]
    # self-contained: nothing fetched from anywhere
    assert "<link" not in page and " src=" not in page and "url(" not in page


def test_finished_run_does_not_refresh_and_unknown_dir_is_empty(tmp_path):
    page = parse(render_report(build_run(tmp_path, running=False)))
    assert not page.find_all("meta", http_equiv="refresh")
    assert page.find("body").attrs["data-running"] == "0"
    empty = collect(tmp_path / "nothing-here")
    assert empty.stages == [] and not empty.running


def test_cli_report_writes_the_page_and_flags_stale_stages(tmp_path, monkeypatch):
    from llmray.cli import main
    from llmray.pipeline import load_pipeline
    from llmray.runner import fingerprints, run_dir
    from llmray.stages import STAGES as REGISTRY

    monkeypatch.setitem(REGISTRY, "probe", "probe_stage")  # the runner tests' test-only kind
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "cli",
                "workdir": str(tmp_path / "runs"),
                "stages": {
                    "a": {"kind": "probe", "n": 3},
                    "b": {"kind": "probe", "n": 2, "data": ["a"]},
                    "c": {"kind": "probe", "n": 1, "data": ["b"]},
                },
            }
        )
    )
    pipe = load_pipeline(str(cfg), [])
    fps = fingerprints(pipe)
    root = run_dir(pipe)
    for name, fp in (("a", fps["a"]), ("b", "0" * 20)):  # b ran with an older config
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "kind": "probe",
                    "fingerprint": fp,
                    "status": "completed",
                    "elapsed_s": 1.5,
                    "metrics": {"sum": 3},
                    "outputs": {},
                }
            )
        )
    assert main(["report", str(cfg)]) == 0
    doc = parse((root / "report.html").read_text())
    rows = {
        r.attrs["data-stage"]: r.find("span").text
        for r in doc.find("table", id="overview").find_all("tr")[1:]
    }
    assert rows == {"a": "completed", "b": "stale", "c": "pending"}
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(cfg), "--out", str(out), "workdir=" + str(tmp_path / "runs")]) == 0
    assert 'id="overview"' in out.read_text()
