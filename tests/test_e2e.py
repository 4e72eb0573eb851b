"""End to end: the tiny pipeline (every stage kind) through the real CLI, then a cached rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import llmray

from llmray.cli import main

pytestmark = pytest.mark.integration  # runs `llmray` in a subprocess, which starts its own Ray

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "support" / "pipelines" / "tiny.yaml"


def test_tiny_pipeline_end_to_end(tmp_path, capsys):
    proc = llmray("run", TINY, f"workdir={tmp_path}", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "tiny"
    stages = ["corpus", "bpe", "tokens", "base", "chat", "cai", "rm", "dpo", "ppo", "safety"]
    for stage in stages:
        man = json.loads((run / stage / "manifest.json").read_text())
        assert man["status"] == "completed", (stage, man.get("error"))
        for rel in man["outputs"].values():
            assert (run / stage / rel).exists(), (stage, rel)
    corpus = json.loads((run / "corpus" / "manifest.json").read_text())["metrics"]
    removed = sum(step["in"] - step["out"] for step in corpus["funnel"])
    assert corpus["docs_in"] == corpus["docs_out"] + removed + corpus["quarantined"]
    base = json.loads((run / "base" / "manifest.json").read_text())
    assert base["inputs"] == {"tokens": json.loads((run / "tokens" / "manifest.json").read_text())["fingerprint"]}
    assert (run / "base" / "metrics.jsonl").read_text().count("\n") >= 2
    assert (run / "report.html").exists() and "corpus" in (run / "report.html").read_text()
    # Constitutional AI: 8 prompts x (1 sample pair + 1 revision pair), each judged; the kept pairs are
    # exactly what dpo read (train + held-out), and every record's chosen side is the judge's pick.
    cai = json.loads((run / "cai" / "manifest.json").read_text())["metrics"]
    assert cai["prompts"] == 8 and cai["pairs"] == 16 and cai["revisions"] == cai["sft_records"] == 8
    assert cai["pairs_kept"] + cai["pairs_dropped"] == 16 and cai["calibration"]["pairs"] == 8
    assert cai["in_process"] is True  # a local CPU Ray llmray started, hf engine: the pass ran in the driver
    prefs = [json.loads(line) for line in (run / "cai" / "data" / "prefs.jsonl").read_text().splitlines()]
    assert len(prefs) == cai["pairs_kept"] and all(r["p_chosen"] >= 0.5 for r in prefs)
    dpo = json.loads((run / "dpo" / "manifest.json").read_text())
    assert dpo["inputs"]["cai"] == json.loads((run / "cai" / "manifest.json").read_text())["fingerprint"]
    assert dpo["metrics"]["ai_feedback_train"] + dpo["metrics"]["ai_feedback_eval"] == cai["pairs_kept"]
    # The post-training chain's contract (test_dpo_stages runs a variant of it under -m slow).
    from test_dpo_stages import check_models_load, check_posttrain_metrics

    check_posttrain_metrics(run, "chat", "rm", "dpo")
    check_models_load(run, ("chat", "dpo", "ppo"), "rm")
    # The report of this real run (every stage kind), rendered in headless Chromium and checked
    # against the run directory: statuses, funnel, tiles, curve point counts, sample answers.
    from test_report_browser import check_report_in_browser

    assert check_report_in_browser(run, tmp_path).exists()
    assert "wall time" in proc.stdout
    assert "row/s]" not in proc.stdout + proc.stderr  # no Ray Data progress bars relayed from workers

    # The same file again: everything cached, nothing reruns.
    again = llmray("run", TINY, f"workdir={tmp_path}", timeout=1500)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("cached") == len(stages)
    # `status` in this process (a fresh one costs seconds): it still reads what two other processes wrote.
    capsys.readouterr()
    assert main(["status", str(TINY), f"workdir={tmp_path}"]) == 0
    assert capsys.readouterr().out.count("cached") == len(stages)
