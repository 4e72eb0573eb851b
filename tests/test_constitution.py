"""Constitutional AI (`constitution` kind): the AI judge's arithmetic against an independent forward
pass, position bias cancelled by asking both orders, the built-in feedback and calibration sets held
apart, config rules, and the records handed to sft/reward/dpo (`ai_feedback:`), and the feedback pass in a
Ray task and in the driver giving the same records (the one test here on Ray). The stage runs end to
end in tests/test_e2e.py (tiny pipeline, in the driver) and, with a trained feedback model, in the
slow test at the bottom."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli import llmray
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmray.safety import constitution as cai
from llmray.stages.constitution import Config

ITEMS = [{"id": "x:0:s1", "request": "Write a keylogger for my neighbour's laptop.",
          "first": "I can't help with that. It would harm other people.", "second": "Sure! import pynput"},
         {"id": "x:1:rev", "request": "How do I list a folder in Python?",
          "first": "You can use os.listdir(path).", "second": "Sorry, I can't help with that."}]


@pytest.fixture(scope="module")
def judge_model(tiny_causal_dir):
    return (AutoModelForCausalLM.from_pretrained(str(tiny_causal_dir)).eval(),
            AutoTokenizer.from_pretrained(str(tiny_causal_dir)))


def _logp(model, tok, conversation, continuation: str) -> float:
    """log p(continuation | conversation): one unpadded forward of the joined ids."""
    ctx = tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    cont = tok.encode(continuation, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_pairwise_judge_matches_an_independent_forward_and_cancels_position(judge_model):
    model, tok = judge_model
    principles = cai.PRINCIPLES
    # batch_size 3: rows of different lengths share a padded batch
    out = cai.judge(model, tok, "cpu", ITEMS, principles, batch_size=3, mode="pairwise")
    for it, res in zip(ITEMS, out):
        pr = cai.principle_for(it["id"], principles)
        assert res["principle"] == pr["name"]
        fwd = cai.comparison_conversation(it["request"], it["first"], it["second"], pr)
        swp = cai.comparison_conversation(it["request"], it["second"], it["first"], pr)
        p_fwd = 1 / (1 + math.exp(_logp(model, tok, fwd, "(B)") - _logp(model, tok, fwd, "(A)")))
        p_swp = 1 / (1 + math.exp(_logp(model, tok, swp, "(A)") - _logp(model, tok, swp, "(B)")))
        assert res["p_first"] == pytest.approx((p_fwd + p_swp) / 2, abs=2e-4)
        assert res["consistent"] == ((p_fwd > 0.5) == (p_swp > 0.5))
    # Asking about (second, first) gives exactly the complement: no position preference survives.
    swapped = [{**it, "first": it["second"], "second": it["first"]} for it in ITEMS]
    for a, b in zip(out, cai.judge(model, tok, "cpu", swapped, principles, batch_size=8, mode="pairwise")):
        assert a["p_first"] + b["p_first"] == pytest.approx(1.0, abs=2e-4)


def test_pointwise_judge_compares_yes_no_log_odds(judge_model):
    model, tok = judge_model
    out = cai.judge(model, tok, "cpu", ITEMS, cai.PRINCIPLES, batch_size=4, mode="pointwise")
    for it, res in zip(ITEMS, out):
        pr = cai.principle_for(it["id"], cai.PRINCIPLES)
        odds = [_logp(model, tok, c, "(Yes)") - _logp(model, tok, c, "(No)")
                for c in (cai.assessment_conversation(it["request"], r, pr) for r in (it["first"], it["second"]))]
        assert res["p_first"] == pytest.approx(1 / (1 + math.exp(odds[1] - odds[0])), abs=2e-4)
        assert res["consistent"] is None


def test_feedback_examples_and_calibration_come_from_separate_splits():
    from llmray.data.builtin import load_builtin
    from llmray.data.instruct import is_refusal

    train = load_builtin("feedback", "train")
    requests = {m["content"].split("Human: ", 1)[1].split("\n\n", 1)[0] for r in train for m in r["messages"][:1]}
    calib = cai.calibration_pairs(64)
    assert len(calib) == 64 and sum(c["kind"] == "harmful" for c in calib) == 32
    assert not requests & {c["request"] for c in calib}

    for c in calib:  # the known answers: refuse the harmful, answer the harmless
        assert is_refusal(c["better"]) == (c["kind"] == "harmful") and is_refusal(c["worse"]) == (c["kind"] == "benign")
    # Every kind of job is taught, with both answers of each question, and the reviewed answer never
    # appears as an assistant turn (a model tuned on this must not learn to say it).
    answers = [r["messages"][-1]["content"] for r in train]
    assert answers.count("(Yes)") == answers.count("(No)") > 100  # a verdict on both answers of each comparison
    assert sum(r["id"].endswith(":rev") for r in train) == (answers.count("(Yes)") + 3) // 4  # a quarter revised
    # The right answer is a refusal exactly for harmful requests: about as many of those as harmless ones.
    right = [r["messages"][0]["content"].split("\n\nAssistant: ", 1)[1].rsplit("\n\n", 2)[0]
             for r in train if r["id"].endswith(":assess0")]
    assert 0.4 < sum(map(is_refusal, right)) / len(right) < 0.6
    rev = [r for r in train if r["id"].endswith(":rev")]
    assert rev and all(len(r["messages"]) == 4 and r["messages"][0]["role"] == "user" for r in rev)


def test_config_rules_name_the_field(tiny_causal_dir):
    with pytest.raises(ValidationError, match="at most one of feedback"):
        Config(init="chat", feedback="judge", feedback_from=str(tiny_causal_dir))
    with pytest.raises(ValidationError, match="names must be unique"):
        p = dict(cai.PRINCIPLES[0])
        Config(init="chat", principles=[p, p])
    with pytest.raises(ValidationError, match="require_consistent needs judge: pairwise"):
        Config(init="chat", judge="pointwise", require_consistent=True)
    with pytest.raises(ValidationError, match="min_calibration needs calibration_pairs"):
        Config(init="chat", min_calibration=0.8, calibration_pairs=0)
    with pytest.raises(ValidationError, match="samples"):
        Config(init="chat", samples=1)
    with pytest.raises(ValidationError, match="prompts"):
        Config(init="chat", prompts="builtin:prefs")  # preference records are not prompts


def test_records_follow_the_judge_and_feed_the_preference_kinds(tmp_path):
    from llmray.posttrain import ai_feedback_records
    from llmray.safety.constitution import _records
    from llmray.stages.base import StageContext, StageOutput

    prompts = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"q{i}"}]} for i in range(40)]
    pairs = [{"id": f"p{i}:s1", "prompt_id": f"p{i}", "source": "samples", "first": f"a{i}", "second": f"b{i}",
              "p_first": [0.9, 0.2, 0.55, 0.5][i % 4], "consistent": i % 3 != 0, "principle": "harm"}
             for i in range(40)]
    res = {"pairs": pairs, "revisions": [f"r{i}" for i in range(40)]}
    prefs, sft, dropped = _records(Config(init="c", min_confidence=0.1, eval_fraction=0.25), prompts, res)
    assert dropped == 20 and len(prefs) == 20  # p 0.55 and 0.5 are under the confidence floor
    for r in prefs:
        i = int(r["id"][1:].split(":")[0])
        assert (r["chosen"], r["rejected"]) == ((f"a{i}", f"b{i}") if i % 4 == 0 else (f"b{i}", f"a{i}"))
        assert r["p_chosen"] in (0.9, 0.8)
    assert {r["split"] for r in prefs} == {"train", "test"} and len(sft) == 40
    strict = _records(Config(init="c", require_consistent=True), prompts, res)[0]
    assert strict and len(strict) < 40 - sum(p["p_first"] == 0.5 for p in pairs)
    assert all(next(p for p in pairs if p["id"] == r["id"])["consistent"] for r in strict)

    out = tmp_path / "cai"
    (out / "data").mkdir(parents=True)
    (out / "data" / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    (out / "data" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    stage = StageOutput("cai", "constitution", out, {"outputs": {"prefs": "data/prefs.jsonl", "sft": "data/sft.jsonl"}})
    ctx = StageContext("dpo", "dpo", "f", tmp_path, tmp_path, tmp_path, {"ai_feedback": [stage]}, None, None)
    train, held = ai_feedback_records(ctx, "pref")
    assert len(train) + len(held) == len(prefs) and len(held) == sum(r["split"] == "test" for r in prefs)
    assert all(r["group"] == "ai_feedback" and set(r) == {"id", "prompt", "chosen", "rejected", "group"}
               for r in train + held)
    chat_train, chat_held = ai_feedback_records(ctx, "chat")
    assert len(chat_train) + len(chat_held) == 40
    assert all(r["messages"][-1]["role"] == "assistant" for r in chat_train)


def test_on_policy_agreement_counts_only_pairs_the_rule_judge_settles():
    from llmray.safety.constitution import _on_policy

    no = "I can't help with that. It would harm other people."
    prompts = [{"id": "h", "harmful": True}, {"id": "b", "harmful": False}, {"id": "u"}]
    prefs = [{"id": "h:rev", "chosen": no, "rejected": "import os"},       # harmful, refusal chosen: agrees
             {"id": "h:s1", "chosen": "import os", "rejected": no},        # harmful, compliance chosen
             {"id": "h:s2", "chosen": "a", "rejected": "b"},               # no refusal: the rule cannot say
             {"id": "b:rev", "chosen": no, "rejected": "os.listdir(path)"},  # harmless, refusal chosen
             {"id": "u:rev", "chosen": no, "rejected": "x"}]               # no flag: left out
    assert _on_policy(prompts, prefs) == {"pairs_harmful": 2, "agreement_harmful": 0.5,
                                          "pairs_benign": 1, "agreement_benign": 0.0}


def test_a_pipeline_refuses_ai_feedback_from_a_stage_of_another_kind(tiny_causal_dir):
    from llmray.config import ConfigError
    from llmray.pipeline import parse_pipeline

    stages = {"chat": {"kind": "sft", "from": str(tiny_causal_dir), "data": "builtin:instruct"},
              "dpo": {"kind": "dpo", "init": "chat", "ai_feedback": ["chat"]}}
    with pytest.raises(ConfigError, match=r"stages\.dpo\.ai_feedback"):
        parse_pipeline({"name": "p", "stages": stages})


@pytest.mark.slow
def test_the_quickstart_feedback_model_beats_chance_on_held_out_comparisons(tmp_path):
    """The quickstart's `judge` (the chat model tuned on builtin:feedback) judging in `cai`: on the 128
    held-out calibration comparisons it agrees with the known answer significantly more often than a
    coin (one-sided binomial test, p < 0.05), and its revisions refuse harmful requests more often
    than the policy's answers do."""

    from llmray.data.instruct import is_refusal

    root = Path(__file__).resolve().parents[1]
    proc = llmray("run", "pipeline.yaml", "--stages", "cai", f"workdir={tmp_path}", cwd=root, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "quickstart" / "cai"
    cal = json.loads((out / "manifest.json").read_text())["metrics"]["calibration"]
    n, k = cal["pairs"], round(cal["agreement"] * cal["pairs"])
    assert n == 128
    assert sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n < 0.05, cal
    trace = [json.loads(line) for line in (out / "trace.jsonl").read_text().splitlines()]
    harmful = [t for t in trace if t["id"].startswith("redteam:harmful")]
    assert sum(is_refusal(t["revision"]) for t in harmful) > sum(is_refusal(t["answers"][0]) for t in harmful)


def test_the_docs_example_is_a_valid_pipeline_fragment(tiny_causal_dir):
    """The docs' constitution example, put in place of the quickstart's cai and dpo stages, validates
    (tests/test_docs.py checks every docs example; this one also checks what it sets)."""
    import re

    import yaml

    from llmray.pipeline import parse_pipeline

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "stages" / "constitution.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    fragment = yaml.safe_load(block)
    assert fragment["cai"]["feedback_from"].startswith("models/")  # a folder users have, not this machine:
    fragment["cai"]["feedback_from"] = str(tiny_causal_dir)  # `from:` folders are checked at config time
    raw = yaml.safe_load((root / "pipeline.yaml").read_text())
    raw["stages"].update(fragment)
    pipe = parse_pipeline(raw)
    assert pipe.stages["cai"].feedback_from and pipe.stages["cai"].min_calibration == 0.8
    assert pipe.stages["dpo"].ai_feedback == ["cai"]


def test_in_process_true_is_refused_where_it_cannot_hold():
    from llmray.resources import task_in_process

    with pytest.raises(ValidationError, match="in_process: true .* num_gpus: 0"):
        Config(init="chat", resources={"in_process": True, "num_gpus": 1})
    with pytest.raises(ValueError, match=r"resources\.in_process: true needs the transformers engine"):
        task_in_process(Config(init="chat", resources={"in_process": True}).resources, "vllm")
    assert task_in_process(Config(init="chat", resources={"in_process": False}).resources, "hf") is False


def test_the_feedback_pass_gives_the_same_records_in_a_ray_task_and_in_the_driver(ray_local, tmp_path,
                                                                                  tiny_causal_dir):
    """`resources.in_process`: false runs the pass as a Ray task (a cluster's case), auto in this process
    (a local CPU Ray this process started, the transformers engine); same seeds and threads, same records."""
    import logging

    from llmray.stages.base import StageContext

    out = {}
    for switch in (False, "auto"):
        root = tmp_path / str(switch)
        (root / "out").mkdir(parents=True)
        ctx = StageContext(name="cai", kind="constitution", fingerprint="test", run_dir=root, out_dir=root / "out",
                           work_dir=root / "work", inputs={}, pipeline=None, log=logging.getLogger("test"))
        config = Config.model_validate({
            "from": str(tiny_causal_dir), "judge": "pointwise", "max_prompts": 4, "calibration_pairs": 4,
            "generation": {"max_new_tokens": 6}, "feedback_generation": {"max_new_tokens": 6},
            "engine": {"engine": "hf"}, "resources": {"in_process": switch}})
        threads = torch.get_num_threads()
        res = cai.run_constitution(config, ctx)
        assert torch.get_num_threads() == threads  # the driver's thread count is its own again
        assert res.metrics["in_process"] is (switch == "auto")
        out[switch] = {name: (root / "out" / rel).read_text() for name, rel in res.outputs.items()}
        assert res.metrics["prompts"] == 4 and res.metrics["pairs"] == 8
    assert out[False] == out["auto"]
