"""Fixed costs of the stages that do not train (curate, tokenizer, tokenize, eval, align, constitution).

Without Ray: `FixedCost`'s work spans (overlapping spans count once; what no span covers before the first
one is start-up) and `bench/fixed_costs.py`'s like-for-like total (a "before" manifest without a split is
compared whole against the "after", never against the after's fixed part alone). On a local Ray: a small
curate -> tokenizer -> tokenize pipeline writes `metrics.fixed_cost` for each stage with phases, work and
other that add up to the wall time. eval, align and constitution report theirs through the same spans
(measured in their Ray tasks); their runs are in tests/test_eval.py, test_align_e2e.py and
test_constitution.py, and the figures of the quickstart's in bench/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

PARTS = ("startup_s", "data_s", "eval_s", "checkpoint_s", "export_s", "other_s", "work_s")


def _adds_up(fc: dict) -> None:
    """Every phase is non-negative (other may dip by clock noise) and the parts sum to the wall."""
    assert fc["wall_s"] > 0 and fc["work_s"] >= 0
    assert all(fc[k] >= 0 for k in fc if k not in ("other_s",)), fc
    assert fc["other_s"] > -0.05, fc
    assert sum(fc.get(k, 0.0) for k in PARTS) == pytest.approx(fc["wall_s"], abs=0.01)


def test_work_spans_count_overlaps_once_and_startup_is_what_no_span_hid():
    from llmray.stages.base import FixedCost

    cost = FixedCost()
    t0 = cost.t0_wall
    cost.work(t0 + 1.0, t0 + 3.0)  # a guardrail trained on the driver
    cost.work(t0 + 2.0, t0 + 5.0)  # a model generating in a Ray task meanwhile
    cost.work(t0 + 4.0, t0 + 4.5)  # inside the previous one
    cost.work(t0 + 7.0, t0 + 8.0)  # scoring after a gap
    cost.work(t0 - 5.0, t0 - 1.0)  # before this stage (a reused result): not this stage's work
    cost.work(t0 + 9.0, t0 + 9.0)  # empty: ignored
    assert cost.work_s() == pytest.approx(5.0)
    assert cost.work_s(until=t0 + 2.5) == pytest.approx(1.5)
    assert cost.uncovered() == pytest.approx(1.0)  # start -> the first span
    assert cost.uncovered(t0 + 4.0) == pytest.approx(1.0)  # the first model's load was hidden by the guardrail
    assert cost.uncovered(t0 + 7.5) == pytest.approx(3.0)  # + the gap 5 -> 7
    m = cost.metrics()  # spans give work_s without passing it
    assert m["work_s"] == pytest.approx(5.0) and m["other_s"] == pytest.approx(m["wall_s"] - 5.0, abs=1e-3)


def test_phases_work_and_other_add_up_to_the_wall():
    from llmray.stages.base import FixedCost

    cost = FixedCost()
    with cost.phase("startup"):
        time.sleep(0.02)
    t = time.time()
    time.sleep(0.03)
    cost.work(t, time.time())
    with cost.phase("export"):
        time.sleep(0.01)
    m = cost.metrics(work_s=cost.work_s())
    _adds_up(m)
    assert m["startup_s"] >= 0.02 and m["work_s"] >= 0.03 and m["export_s"] >= 0.01


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "fixed_costs.py"
    spec = importlib.util.spec_from_file_location("bench_fixed_costs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _manifest(root: Path, stage: str, metrics: dict, elapsed: float) -> None:
    (root / stage).mkdir(parents=True, exist_ok=True)
    (root / stage / "manifest.json").write_text(json.dumps({"name": stage, "elapsed_s": elapsed,
                                                            "metrics": metrics}))


def test_fixed_costs_compares_an_unsplit_before_whole_against_the_after(tmp_path, capsys):
    """curate before the split reported no work (all 20 s fixed); after it reports 15 s of work in 19 s.
    Like-for-like counts curate whole on both sides (20 -> 19); base splits on both sides (10 -> 4); the
    estimate gives curate's before the after's work (20 - 15 = 5 -> 4)."""
    fc = _bench()
    before, after = tmp_path / "before", tmp_path / "after"
    _manifest(before, "corpus", {"docs_in": 5}, 20.0)
    _manifest(after, "corpus", {"fixed_cost": {"wall_s": 19.0, "work_s": 15.0, "startup_s": 3.0,
                                               "export_s": 0.5, "other_s": 0.5}}, 19.0)
    _manifest(before, "base", {"fixed_cost": {"wall_s": 110.0, "work_s": 100.0, "startup_s": 9.0}}, 110.0)
    _manifest(after, "base", {"fixed_cost": {"wall_s": 104.0, "work_s": 100.0, "startup_s": 3.0}}, 104.0)
    rows, total = fc.compare(before, after, ["base", "corpus"])
    assert [r[0] for r in rows] == ["base", "corpus"]
    assert total["lfl"] == pytest.approx([30.0, 23.0])  # 10 + 20 -> 4 + 19
    assert total["before"]["fixed_s"] == pytest.approx(30.0) and total["after"]["fixed_s"] == pytest.approx(8.0)
    assert total["est"] == pytest.approx([15.0, 8.0])  # curate's before given the after's 15 s of work: 5 -> 4
    fc.main([str(before), str(after), "base", "corpus"])
    out = capsys.readouterr().out
    assert "corpus*" in out and "base*" not in out
    assert "like-for-like (stages marked * counted whole on both sides: corpus): 30.0 -> 23.0 s (x0.77)" in out
    assert "as each side reports it (not comparable where marked *): 30.0 -> 8.0 s" in out
    assert "estimated" in out and "15.0 -> 8.0 s (x0.53)" in out


def test_a_training_manifest_without_fixed_cost_splits_by_its_logged_steps(tmp_path):
    fc = _bench()
    _manifest(tmp_path, "rm", {}, 50.0)
    (tmp_path / "rm" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"step": 0, "val_loss": 1.0}, {"step": 10, "step_time_s": 2.0}, {"step": 20, "step_time_s": 1.5})))
    c = fc.stage_cost(tmp_path, "rm")
    assert c["split"] and c["work_s"] == pytest.approx(35.0) and c["fixed_s"] == pytest.approx(15.0)


def test_curate_tokenizer_tokenize_report_their_fixed_cost(ray_local, tmp_path):
    """A small pipeline through the runner: every data stage's manifest splits its wall into work (the Ray
    Data plan; BPE training; tokenizer calls) and phases that add up to it."""
    from llmray.pipeline import parse_pipeline
    from llmray.runner import run_pipeline
    from llmray.testing import stdlib_texts

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(stdlib_texts(60))))
    pipe = parse_pipeline({"name": "fc", "workdir": str(tmp_path / "runs"), "stages": {
        "corpus": {"kind": "curate", "sources": [{"type": "jsonl", "path": str(src)}],
                   "gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False},
                   "fineweb": {"enabled": False}, "quality": {"enabled": False}},
        "bpe": {"kind": "tokenizer", "data": "corpus", "vocab_size": 600},
        "tokens": {"kind": "tokenize", "data": "corpus", "tokenizer": "bpe", "seq_len": 64, "val_fraction": 0.1}}})
    run_pipeline(pipe, echo=lambda *_: None)
    runs = tmp_path / "runs" / "fc"
    fcs = {s: json.loads((runs / s / "manifest.json").read_text())["metrics"]["fixed_cost"]
           for s in ("corpus", "bpe", "tokens")}
    for fc in fcs.values():
        _adds_up(fc)
        assert fc["work_s"] > 0
    # The phases each kind names (some take milliseconds here: present, not necessarily > 0 after rounding).
    assert {"startup_s", "export_s"} <= set(fcs["corpus"]) and fcs["corpus"]["export_s"] > 0  # parquet writes
    assert {"data_s", "eval_s", "export_s"} <= set(fcs["bpe"]) and fcs["bpe"]["data_s"] > 0  # Ray Data read
    assert {"startup_s", "export_s"} <= set(fcs["tokens"]) and fcs["tokens"]["startup_s"] > 0
