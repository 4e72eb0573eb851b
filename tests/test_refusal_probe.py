"""bench/refusal_probe.py on a random tiny model: the probe reads the decision point (the first answer
token after the chat template's generation prompt) and the first-token objective moves it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import refusal_probe  # noqa: E402


def _run(capsys, model_dir, *args) -> list[dict]:
    assert refusal_probe.main([str(model_dir), "--probe", "8", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.integration  # trains a tiny model (~4 s): not in the fast tier
def test_the_probe_is_read_at_the_decision_point_and_the_decision_objective_moves_it(capsys, tiny_causal_dir):
    lines = _run(capsys, tiny_causal_dir, "--steps", "6", "--every", "3", "--lr", "0.01", "--objective", "first")
    probes, summary = lines[:-1], lines[-1]
    assert [p["step"] for p in probes] == [0, 3, 6]
    assert summary["records_train"] > 100 and summary["refusal_first_tokens"]
    for p in probes:
        for split in ("train", "test"):
            s = p[split]
            assert 0 < s["harmful"] < 1 and 0 < s["lookalike"] < 1
            assert abs(s["gap"] - (s["harmful"] - s["lookalike"])) <= 0.0011
    # Every train record's first answer token is trained, refusals' on harmful ones: P(refusal) rises there.
    assert probes[-1]["train"]["harmful"] > probes[0]["train"]["harmful"] + 0.01
