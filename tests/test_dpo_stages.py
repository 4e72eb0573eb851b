"""sft -> reward -> dpo through the runner on real local Ray (tiny random model, a few steps each).

Checks the run-directory contract: manifests, metrics, quarantine, and that every `model/`
loads with transformers (AutoModelForCausalLM / AutoModelForSequenceClassification)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ray_local, tiny_causal_dir):
    from llmray.pipeline import parse_pipeline
    from llmray.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("post")
    bad = tmp / "prefs.jsonl"
    good = {"prompt": "What does `len` do?", "chosen": "`len(obj)`: Return the number of items.",
            "rejected": "`len(obj)`: number the Return of items."}
    bad.write_text("\n".join([json.dumps(good)] * 12 + ["{oops", json.dumps({"prompt": "x"})]) + "\n")
    tiny = {"steps": 3, "micro_batch_size": 4, "warmup_steps": 1, "log_every": 1, "eval_every": 3,
            "eval_batches": 2, "checkpoint_every": 2}
    raw = {"name": "post", "workdir": str(tmp / "runs"), "stages": {
        "chat": {"kind": "sft", "from": str(tiny_causal_dir), "train": tiny, "samples": 2, "max_new_tokens": 8,
                 "max_records": 64},
        "rm": {"kind": "reward", "init": "chat", "train": tiny, "max_records": 64,
               "resources": {"num_workers": 2}},
        "pref": {"kind": "dpo", "init": "chat", "data": str(bad), "eval_fraction": 0.3,
                 "loss_type": "sigmoid", "label_smoothing": 0.1, "train": {**tiny, "micro_batch_size": 2}},
    }}
    pipe = parse_pipeline(raw)
    states = run_pipeline(pipe)
    return tmp / "runs" / "post", states


def _manifest(run, name):
    return json.loads((run / name / "manifest.json").read_text())


def test_chain_completes_with_metrics(chain):
    run, states = chain
    assert states == {"chat": "completed", "rm": "completed", "pref": "completed"}
    sft = _manifest(run, "chat")["metrics"]
    assert sft["heldout_loss_before"] > 0 and sft["heldout_loss_after"] > 0
    assert len(sft["samples"]) == 2 and {"prompt", "reference", "before", "after"} <= set(sft["samples"][0])
    rm = _manifest(run, "rm")["metrics"]
    assert 0 <= rm["heldout_accuracy"] <= 1 and "heldout_margin" in rm and rm["heldout_pairs"] > 0
    # built-in pairs report accuracy per kind of wrong answer
    from llmray.data.instruct import REJECTIONS

    assert rm["heldout_accuracy_by_kind"] and set(rm["heldout_accuracy_by_kind"]) <= set(REJECTIONS)
    dpo = _manifest(run, "pref")["metrics"]
    for key in ("heldout_reward_accuracy", "heldout_chosen_reward", "heldout_rejected_reward",
                "heldout_margin", "init_heldout_accuracy"):
        assert key in dpo, key
    # at step 0 the policy equals the reference: every implicit reward is exactly 0
    assert dpo["heldout_margin_before"] == pytest.approx(0.0, abs=1e-6)
    assert dpo["quarantined"] == 2
    q = (run / "pref" / "quarantine" / "records.jsonl").read_text().splitlines()
    assert [json.loads(x)["line"] for x in q] == [13, 14]
    lines = (run / "pref" / "metrics.jsonl").read_text().splitlines()
    assert any("reward_accuracy" in json.loads(x) for x in lines)


def test_models_load_with_transformers(chain):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    run, _ = chain
    for stage in ("chat", "pref"):
        model = AutoModelForCausalLM.from_pretrained(str(run / stage / "model"))
        assert type(model).__name__ == "LlamaForCausalLM"
    rm = AutoModelForSequenceClassification.from_pretrained(str(run / "rm" / "model"))
    tok = AutoTokenizer.from_pretrained(str(run / "rm" / "model"))
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    assert rm.config.pad_token_id == tok.pad_token_id
    ids = tok(["a b c", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert rm(**ids).logits.shape == (2, 1)
