"""Answer quality (llmray.safety.answers) on hand-made strings, the held-out question set, the markdown and
HTML tables of an align stage, and the evaluation engine decoding with the model folder's generation
config (no Ray)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from llmray.report.align import align_stage_html
from llmray.safety.answers import degenerate, distinct_n, question_set, score_answers, word_f1
from llmray.safety.tables import align_markdown


def test_word_f1_follows_squad():
    assert word_f1("Denver Broncos", "Broncos") == pytest.approx(2 / 3)  # SQuAD's own example
    assert word_f1("The cat sat.", "a cat sat down") == pytest.approx(0.8)  # articles, punctuation, case
    # Backticks and call syntax are punctuation: the reference format costs nothing.
    assert word_f1("json dumps obj: serialize obj", "`json.dumps(obj)`: Serialize obj") == 1.0
    assert word_f1("", "Return the sum.") == 0.0 and word_f1("", "") == 1.0
    assert word_f1("loop loop loop", "a loop") == pytest.approx(0.5)  # bag of words: repeats count once each


def test_distinct_2_and_degenerate_answers():
    assert distinct_n(["a b a b", "c d"]) == pytest.approx(3 / 4)
    assert distinct_n(["one"]) is None
    assert degenerate("the file is the file of the file is the file")  # "the file is the" twice
    assert not degenerate("Return the number of items in a container.")
    assert degenerate("be be be be be")  # a 4-gram of one word, repeated
    assert not degenerate("be be be be")  # one 4-gram only


def test_question_set_is_plain_held_out_questions_chosen_deterministically():
    from llmray.data.instruct import instruction_pairs, is_refusal

    qs = question_set(16)
    assert len(qs) == 16 and qs[:8] == question_set(8)  # a stable order: a prefix of a larger set
    train = {p["messages"][0]["content"] for p in instruction_pairs("train")}
    for q in qs:
        assert q["prompt"][-1]["role"] == "user" and q["prompt"][-1]["content"] not in train
        assert "harmful" not in q and q["reference"].startswith("`")  # a stdlib API's signature and summary
        assert q["reference"] and not is_refusal(q["reference"])
    summary, recs = score_answers(qs[:2], [qs[0]["reference"], "be be be be be"])
    assert summary["n"] == 2 and recs[0]["word_f1"] == 1.0 and summary["word_f1"] == pytest.approx(
        (1.0 + recs[1]["word_f1"]) / 2, abs=1e-4)
    assert summary["degenerate"] == 1 and summary["degenerate_rate"] == 0.5 and summary["degenerate_rate_ci"] == [
        0.0945, 0.9055]


def test_align_tables_show_models_side_by_side():
    row = {"stage": "chat", "n_harmful": 10, "n_benign": 10, "unsafe_rate": 0.5, "unsafe_rate_ci": [0.2366, 0.7634],
           "unsafe_rate_guarded": 0.0, "unsafe_rate_guarded_ci": [0.0, 0.2775], "over_refusal": 0.0,
           "over_refusal_ci": [0.0, 0.2775], "over_refusal_guarded": None, "over_refusal_guarded_ci": None,
           "unseen": {"harm": ["privacy"], "unsafe_rate": 1.0, "unsafe_rate_ci": [0.7225, 1.0],
                      "unsafe_rate_guarded": 0.1, "unsafe_rate_guarded_ci": [0.0179, 0.4042]}}
    answers = {"chat": {"n": 2, "word_f1": 0.25, "distinct_2": 0.9, "degenerate_rate": 0.0, "mean_words": 6.5,
                        "examples": [{"prompt": "What does `len` do?", "reference": "`len(obj)`: Return the length.",
                                      "response": "Return the length.", "word_f1": 0.75, "degenerate": False}]}}
    metrics = {"table": [row], "gate": {"chat": {"status": "blocked"}}, "answers": answers,
               "by_harm": {"chat": {"privacy": {"unsafe_rate": 1.0, "unsafe_rate_ci": [0.7225, 1.0]}}}}
    md = align_markdown(metrics)
    assert ("| chat | 0.500 [0.237, 0.763] | 0.000 [0.000, 0.278] | 0.000 [0.000, 0.278] | – | "
            "1.000 [0.723, 1.000] / 0.100 [0.018, 0.404] | blocked |") in md
    assert "| privacy (unseen) | unsafe 1.000 [0.723, 1.000]; over-refusal – |" in md
    assert "| chat | 0.25 | 0.9 | 0.0 | 6.5 |" in md
    html = align_stage_html(SimpleNamespace(name="safety", metrics=metrics))
    for ident in ("align-rates-safety", "align-harm-safety", "align-answers-safety", "align-examples-safety"):
        assert f'id="{ident}"' in html
    assert "Return the length. (F1 0.75)" in html and "privacy (unseen)" in html


def test_evaluation_decodes_with_the_folders_generation_config(tmp_path, tiny_causal_dir):
    from llmray.safety.evaluate import HFEngine

    convs = [[{"role": "user", "content": "What does json.dumps do?"}]]
    plain = HFEngine(str(tiny_causal_dir), 24)
    assert plain.decoding == {}
    folder = shutil.copytree(tiny_causal_dir, tmp_path / "m")
    cfg = json.loads((folder / "generation_config.json").read_text())
    cfg.update(no_repeat_ngram_size=1, temperature=0.7)  # a served model's settings; sampling stays off here
    (folder / "generation_config.json").write_text(json.dumps(cfg))
    tuned = HFEngine(str(folder), 24)
    assert tuned.decoding == {"no_repeat_ngram_size": 1}
    a, b = plain.generate(convs)[0], tuned.generate(convs)[0]
    assert a != b and tuned.generate(convs)[0] == b  # the folder's setting changed the greedy answer, repeatably
