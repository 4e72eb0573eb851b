"""sft -> reward -> dpo through the runner on real local Ray (tiny random model, a few steps each).

Checks the run-directory contract: manifests, metrics, quarantine, and that every `model/`
loads with transformers (AutoModelForCausalLM / AutoModelForSequenceClassification).

The chain here (sft from a folder, a 2-worker reward model, DPO on a user file with bad lines) is
`slow`: CI checks the same contract with `check_posttrain_metrics` and `check_models_load` on the
chat -> rm -> dpo stages of the end-to-end run (tests/test_e2e.py), the quarantine of bad preference
lines in test_instruct_data_formats / test_data_readers, and 2-worker training in test_pretrain."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # ~2 min on 2 cores; see the module docstring for what covers it in CI


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


def check_posttrain_metrics(run, sft: str, rm: str, dpo: str) -> None:
    """The metrics contract of an sft -> reward -> dpo chain in run directory `run`."""
    from llmray.data.instruct import REJECTIONS

    m = _manifest(run, sft)["metrics"]
    assert m["heldout_loss_before"] > 0 and m["heldout_loss_after"] > 0
    assert len(m["samples"]) == 2 and {"prompt", "reference", "before", "after"} <= set(m["samples"][0])
    m = _manifest(run, rm)["metrics"]
    assert 0 <= m["heldout_accuracy"] <= 1 and "heldout_margin" in m and m["heldout_pairs"] > 0
    # built-in pairs report accuracy per kind of wrong answer
    assert m["heldout_accuracy_by_kind"] and set(m["heldout_accuracy_by_kind"]) <= set(REJECTIONS)
    m = _manifest(run, dpo)["metrics"]
    for key in ("heldout_reward_accuracy", "heldout_chosen_reward", "heldout_rejected_reward",
                "heldout_margin", "init_heldout_accuracy"):
        assert key in m, key
    # at step 0 the policy equals the reference: every implicit reward is exactly 0
    assert m["heldout_margin_before"] == pytest.approx(0.0, abs=1e-6)
    lines = (run / dpo / "metrics.jsonl").read_text().splitlines()
    assert any("reward_accuracy" in json.loads(x) for x in lines)
    for stage in (sft, rm, dpo):  # every training stage reports its fixed cost (issue 24)
        fc = _manifest(run, stage)["metrics"]["fixed_cost"]
        assert fc["startup_s"] > 0 and fc["eval_s"] > 0 and fc["work_s"] > 0 and fc["export_s"] > 0, (stage, fc)
        assert fc["wall_s"] >= fc["startup_s"] + fc["eval_s"] + fc["work_s"] + fc["data_s"], (stage, fc)


def check_models_load(run, causal: tuple[str, ...], reward: str) -> None:
    """Every causal stage's model/ loads as LlamaForCausalLM; the reward model as a 1-label
    LlamaForSequenceClassification whose pad token matches its tokenizer's, scoring a padded batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for stage in causal:
        model = AutoModelForCausalLM.from_pretrained(str(run / stage / "model"))
        assert type(model).__name__ == "LlamaForCausalLM"
    rm = AutoModelForSequenceClassification.from_pretrained(str(run / reward / "model"))
    tok = AutoTokenizer.from_pretrained(str(run / reward / "model"))
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    assert rm.config.pad_token_id == tok.pad_token_id
    ids = tok(["a b c", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert rm(**ids).logits.shape == (2, 1)


def test_chain_completes_with_metrics(chain):
    run, states = chain
    assert states == {"chat": "completed", "rm": "completed", "pref": "completed"}
    check_posttrain_metrics(run, "chat", "rm", "pref")
    assert _manifest(run, "pref")["metrics"]["quarantined"] == 2
    q = (run / "pref" / "quarantine" / "records.jsonl").read_text().splitlines()
    assert [json.loads(x)["line"] for x in q] == [13, 14]


def test_models_load_with_transformers(chain):
    run, _ = chain
    check_models_load(run, ("chat", "pref"), "rm")
