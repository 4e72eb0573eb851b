"""Programmable rewards (RLVR) for `ppo` / `grpo`: `reward:` as a stage, a `module:function` or a
weighted list; `from:` instead of `init:`; `builtin:arithmetic`; the reward-function worker pool.

Fast (no Ray): the built-in reward functions and Wilson interval, the arithmetic set (deterministic,
disjoint splits, right answers), config parsing and its errors (exit-2 config errors naming
`stages.<x>.reward`), the source digest, a worker's handling of failing functions.
With a real local Ray (run under `flock /tmp/llmray-ray.lock`): the pool scores a batch through
two actors importing a function from this file; raising functions are counted, not fatal; the
error-rate threshold fails; a tiny GRPO run from a `from:` folder on `builtin:arithmetic` with
`exact_match` (plus a failing term) completes and reports the held-out exact-match rates.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmray.config import ConfigError
from llmray.pipeline import parse_pipeline
from llmray.rlhf import rewards
from llmray.stages import get_stage

EXACT = "llmray.rlhf.rewards:exact_match"


# ---------------------------------------------------------------- functions the tests reference by name


def always_raises(prompt, completion, **_):
    raise RuntimeError("checker crashed")


def returns_none(prompt, completion):
    return None


def returns_nan_or_text(prompt, completion):
    return float("nan") if "2" in prompt else "high"


def length_score(prompt, completion, reference=None):
    return float(len(completion)) + (100.0 if reference else 0.0)


def picky(prompt, completion, reference=None):
    """Fails on additions: a function that breaks on part of the data."""
    if "+" in prompt:
        raise ValueError("no additions, please")
    return 0.5


# ---------------------------------------------------------------- built-in functions and statistics


@pytest.mark.parametrize("completion,reference,want", [
    ("The sum is 42. Answer: 42", "42", 1.0),
    ("Answer: 41", "42", 0.0),
    ("I think 7, no wait, 12", "12", 1.0),          # the last number when there is no Answer:
    ("Answer: 12 (checked 3 times)", "12", 1.0),    # Answer: wins over a later number
    ("answer is 1,200", "1200", 1.0),
    ("Answer: 3.0", "3", 1.0),
    ("no number here", "3", 0.0),
    ("  Paris. ", "paris", 1.0),                     # non-numeric references compare as text
])
def test_exact_match(completion, reference, want):
    assert rewards.exact_match("q", completion, reference=reference) == want


def test_exact_match_without_reference_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="reference"):
        rewards.exact_match("q", "Answer: 3")


def test_format_check():
    assert rewards.format_check("q", "3 + 4 makes 7. Answer: 7") == 1.0
    assert rewards.format_check("q", "Answer: 7 because") == 0.0
    assert rewards.format_check("q", "seven") == 0.0


def test_wilson_interval():
    lo, hi = rewards.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = rewards.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert rewards.wilson_interval(0, 0) == (0.0, 1.0)


# ---------------------------------------------------------------- builtin:arithmetic


def test_arithmetic_builtin_is_deterministic_disjoint_and_right():
    from llmray.data.formats import check_spec, load_data
    from llmray.data.verifiable import TEST_SIZE, TRAIN_SIZE, arithmetic_prompts

    train, test = arithmetic_prompts("train"), arithmetic_prompts("test")
    assert len(train) == TRAIN_SIZE and len(test) == TEST_SIZE
    assert arithmetic_prompts("test") == test  # deterministic
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in test}
    kinds = {r["id"].split(":")[1] for r in test}
    assert {"add", "mul", "word0", "word1", "word2"} <= kinds
    for r in train[:300] + test:
        q = r["prompt"][0]["content"]
        if " + " in q or " * " in q:  # "What is a op b? ..." : recompute
            expr = q.split("What is ", 1)[1].split("?", 1)[0]
            a, op, b = expr.split()
            assert int(r["reference"]) == (int(a) + int(b) if op == "+" else int(a) * int(b)), q
        assert rewards.exact_match(q, f"Answer: {r['reference']}", reference=r["reference"]) == 1.0
    assert check_spec("builtin:arithmetic", "prompt") == "builtin:arithmetic"
    loaded = load_data("builtin:arithmetic", "prompt", "test").records
    assert loaded[0]["reference"] == test[0]["reference"] and loaded[0]["id"] == test[0]["id"]


# ---------------------------------------------------------------- config


def _cfg(kind="grpo", **kw):
    raw = {"kind": kind, "init": "chat", **kw}
    if "from" in kw or "from_" in kw:
        raw.pop("init")
    if kw.get("init") is not None:
        raw["init"] = kw["init"]
    return get_stage(kind).Config.model_validate(raw)


def test_reward_forms_parse_and_only_stages_are_inputs():
    stage = _cfg(reward="rm")
    assert stage.input_refs() == {"init": ["chat"], "reward": ["rm"]} and stage.reward_functions() == []
    fn = _cfg(reward=EXACT)
    assert fn.input_refs() == {"init": ["chat"]} and fn.reward_functions() == [EXACT]
    mixed = _cfg(reward=[{"stage": "rm", "weight": 0.5}, {"function": EXACT, "weight": 1.0},
                         {"function": "llmray.rlhf.rewards:format_check", "weight": -0.2}, {"stage": "rm"}])
    assert mixed.input_refs() == {"init": ["chat"], "reward": ["rm"]}
    assert [(t.name, t.weight) for t in mixed.reward_terms()] == [
        ("rm", 0.5), (EXACT, 1.0), ("llmray.rlhf.rewards:format_check", -0.2), ("rm", 1.0)]
    assert mixed.reward == [t for t in mixed.reward]  # kept as written, not rewritten
    for field in ("from_", "reward"):
        assert type(mixed).model_fields[field].json_schema_extra == {"external_input": True}
    assert type(mixed).model_fields["reward_workers"].json_schema_extra == {"fingerprint": False}


def test_from_replaces_init(tiny_causal_dir, tmp_path):
    c = _cfg(**{"from": str(tiny_causal_dir)}, reward=EXACT)
    assert c.from_ == str(tiny_causal_dir) and c.init is None and c.input_refs() == {}
    with pytest.raises(ValidationError, match="exactly one of init"):
        get_stage("grpo").Config.model_validate({"kind": "grpo", "init": "chat", "from": str(tiny_causal_dir),
                                                 "reward": EXACT})
    with pytest.raises(ValidationError, match="from"):  # not a model folder: refused at config time
        _cfg(**{"from": str(tmp_path)}, reward=EXACT)
    with pytest.raises(ValidationError, match="exactly one of init"):
        get_stage("ppo").Config.model_validate({"kind": "ppo", "reward": EXACT})


@pytest.mark.parametrize("reward,message", [
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("llmray.rlhf.rewards:no_such_fn", "has no attribute 'no_such_fn'"),
    ("llmray.rlhf.rewards:EXACT_MATCH_NOPE", "has no attribute"),
    ("llmray.rlhf.rewards:_NUMBER", "not a callable"),
    ("bad module:fn", "not a `module:function` reference"),
    ([{"function": "no_such_module_xyz:fn"}], "term 0: cannot import"),
    ([{"stage": "rm", "function": EXACT}], "exactly one of `stage`"),
    ([{"weight": 2.0}], "exactly one of `stage`"),
    ([], "non-empty list"),
])
def test_bad_reward_is_a_config_error_naming_the_field(reward, message, tiny_causal_dir):
    raw = {"name": "p", "stages": {
        "chat": {"kind": "sft", "from": str(tiny_causal_dir), "data": "builtin:instruct"},
        "rm": {"kind": "reward", "init": "chat"},
        "rl": {"kind": "grpo", "init": "chat", "reward": reward}}}
    with pytest.raises(ConfigError) as e:
        parse_pipeline(raw)
    paths = [path for path, _, _ in e.value.items]
    assert paths == ["stages.rl.reward"], e.value.render()
    assert message in e.value.render()


def test_pipeline_graph_sees_reward_stages_of_a_weighted_list(tiny_causal_dir):
    from llmray.graph import edges

    stages = {"chat": {"kind": "sft", "from": str(tiny_causal_dir), "data": "builtin:instruct"},
              "rm": {"kind": "reward", "init": "chat"},
              "rl": {"kind": "grpo", "init": "chat", "prompts": "builtin:arithmetic",
                     "reward": [{"stage": "rm", "weight": 0.5}, {"function": EXACT}]},
              "vr": {"kind": "grpo", "from": str(tiny_causal_dir), "reward": EXACT}}
    pipe = parse_pipeline({"name": "p", "stages": stages})
    assert edges(pipe)["rl"] == ["chat", "rm"] and edges(pipe)["vr"] == []
    bad = {**stages, "rl": {**stages["rl"], "reward": [{"stage": "chat"}, {"function": EXACT}]}}
    with pytest.raises(ConfigError, match="stages.rl.reward.*kind reward"):
        parse_pipeline({"name": "p", "stages": bad})


def test_ppo_critic_from_reward_needs_a_reward_model():
    assert _cfg("ppo", reward=EXACT).critic.init == "reward"  # the default: the driver uses the policy
    with pytest.raises(ValidationError, match="critic.init: reward needs a reward-model stage"):
        _cfg("ppo", reward=EXACT, critic={"init": "reward"})
    assert _cfg("ppo", reward=EXACT, critic={"init": "policy"}).critic.init == "policy"


def test_callable_source_digest_follows_the_module_file(tmp_path, monkeypatch):
    mod = tmp_path / "my_reward_mod.py"
    mod.write_text("def score(prompt, completion):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = "my_reward_mod:score"
    first = rewards.callable_source_digest(ref)
    assert first == rewards.callable_source_digest(ref)
    assert rewards.module_search_root(ref) == str(tmp_path)
    mod.write_text("def score(prompt, completion):\n    return 2.0\n")
    assert rewards.callable_source_digest(ref) != first
    assert rewards.callable_source_digest(EXACT) != first


# ---------------------------------------------------------------- one worker, no Ray


def test_worker_turns_failures_into_counted_errors():
    from llmray.rlhf.scoring import RewardFnWorker

    refs = ["test_rewards:always_raises", "test_rewards:returns_none", "test_rewards:length_score", EXACT,
            "test_rewards:returns_nan_or_text"]
    w = RewardFnWorker(refs)
    jobs = [{"prompt": "What is 2 + 2?", "completion": "Answer: 4", "fields": {"reference": "4", "harmful": False}},
            {"prompt": "What is 2 + 3?", "completion": "Answer: 6", "fields": {}}]
    got = w.score(refs, jobs)
    assert [v for v, _ in got["test_rewards:always_raises"]] == [None, None]
    assert "RuntimeError: checker crashed" in got["test_rewards:always_raises"][0][1]
    assert "returned NoneType" in got["test_rewards:returns_none"][0][1]
    # only the keyword fields the function names are passed (`harmful` is not)
    assert got["test_rewards:length_score"] == [(109.0, None), (9.0, None)]
    assert got[EXACT][0] == (1.0, None) and "reference" in got[EXACT][1][1]
    nan, text = got["test_rewards:returns_nan_or_text"][0], w._call(
        "test_rewards:returns_nan_or_text", {"prompt": "q", "completion": "", "fields": {}})
    assert nan[0] is None and "not a finite number" in nan[1]
    assert text[0] is None and "returned str 'high'" in text[1]


# ---------------------------------------------------------------- the pool on a real Ray


class _Cfg:
    """The fields RewardScorer reads, for a pool without a whole stage config."""

    def __init__(self, reward, rate=0.1):
        self._c = _cfg(reward=reward, max_reward_error_rate=rate, reward_on_error=-1.0,
                       rollout={"generate_timeout_s": 120})

    def __getattr__(self, name):
        return getattr(self._c, name)


def _pool(refs, workers=2):
    from llmray.resources import ActorResources
    from llmray.rlhf.actors import RayActorGroup
    from llmray.rlhf.scoring import RewardFnWorker, worker_env

    return RayActorGroup("reward_fn", RewardFnWorker, ActorResources(num_cpus=0.1), workers, args=(refs,),
                         env=worker_env(refs), name_prefix="llmray-test", ready_timeout_s=120)


def _batch(tok, n=6):
    prompts = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
                "reference": str(i + 1), "ids": [1, 2]} for i in range(n)]
    texts = [f"Answer: {i + 1}" if i % 2 == 0 else "no idea" for i in range(n)]
    return prompts, [tok.encode(t, add_special_tokens=False) for t in texts]


def test_pool_scores_a_batch_and_counts_errors(ray_local, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from llmray.rlhf.scoring import RewardScorer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    reward = [{"function": EXACT, "weight": 2.0}, {"function": "test_rewards:picky", "weight": 1.0}]
    refs = [EXACT, "test_rewards:picky"]
    pool = _pool(refs)
    try:
        pool.wait_ready()
        pids = set(pool.run("ping", timeout=60))
        assert len(pids) == 2  # two worker processes, neither the driver
        scorer = RewardScorer(_Cfg(reward, rate=1.0), tok, [], {}, pool, logging.getLogger("test.rewards"))
        prompts, responses = _batch(tok)
        out = scorer.score(prompts, responses, extra_functions=["llmray.rlhf.rewards:format_check"])
        assert list(out["terms"][EXACT]) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
        assert list(out["terms"]["test_rewards:picky"]) == [-1.0] * 6  # every prompt is an addition
        assert list(out["terms"]["llmray.rlhf.rewards:format_check"]) == [1.0, 0.0] * 3
        assert list(out["scores"]) == pytest.approx([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
        m = scorer.metrics()
        assert out["errors"] == 6 and m["reward_errors"] == 6 and m["reward_function_calls"] == 18
        assert m["reward_error_examples"][0] == "test_rewards:picky: ValueError: no additions, please"
    finally:
        pool.shutdown()


def test_error_rate_threshold_fails(ray_local, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from llmray.rlhf.scoring import RewardErrorRate, RewardScorer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    pool = _pool(["test_rewards:always_raises"], workers=1)
    try:
        pool.wait_ready()
        scorer = RewardScorer(_Cfg("test_rewards:always_raises", rate=0.5), tok, [], {}, pool,
                              logging.getLogger("test.rewards"))
        prompts, responses = _batch(tok, 4)
        with pytest.raises(RewardErrorRate, match=r"failed on 4 of 4 calls .*max_reward_error_rate 0.5.*"
                                                  r"checker crashed"):
            scorer.score(prompts, responses)
    finally:
        pool.shutdown()


# ---------------------------------------------------------------- a tiny GRPO run with a verifiable reward


def test_grpo_with_exact_match_on_arithmetic_from_a_folder(ray_local, tiny_causal_dir, tmp_path):
    from llmray.stages import grpo
    from llmray.stages.base import StageContext

    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    log = logging.getLogger("test.grpo_rlvr")
    log.setLevel(logging.INFO)
    ctx = StageContext(name="grpo_rlvr", kind="grpo", fingerprint="test", run_dir=tmp_path, out_dir=out,
                       work_dir=work, inputs={}, pipeline=None, log=log)
    cfg = grpo.Config.model_validate({
        "kind": "grpo", "from": str(tiny_causal_dir), "prompts": "builtin:arithmetic",
        "reward": [{"function": EXACT}, {"function": "test_rewards:picky", "weight": 0.1}],
        "max_reward_error_rate": 1.0, "reward_workers": 1,
        "iterations": 2, "batch_size": 2, "group_size": 2, "num_eval": 8, "checkpoint_every": 5,
        "generation": {"max_new_tokens": 8},
        "optim": {"lr": 1e-4, "minibatch_size": 4, "micro_batch_size": 4, "epochs": 1},
        "rollout": {"engine": "hf"}, "resources": {"ready_timeout_s": 120}})
    m = grpo.run(cfg, ctx).metrics
    assert m["iterations"] == 2 and m["samples_trained"] == 8
    for when in ("init", "final"):
        rate, (lo, hi) = m[f"eval_exact_match_{when}"], m[f"eval_exact_match_{when}_ci95"]
        assert 0.0 <= lo <= rate <= hi <= 1.0 and hi > 0  # Wilson's upper bound is above 0 even at 0/8
        assert set(m[f"eval_reward_terms_{when}"]) == {EXACT, "test_rewards:picky"}
    assert m["eval_exact_match_n"] == 8 and math.isfinite(m["eval_exact_match_gain"])
    # additions make `picky` raise: counted, shown, and the run still completed
    assert m["reward_errors"] > 0 and m["reward_error_examples"]
    assert "no additions" in m["reward_error_examples"][0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1]
    assert all(f"reward_term/{EXACT}" in r and "reward_errors" in r for r in records)
    assert (out / "model" / "config.json").exists() and Path(str(tiny_causal_dir)).exists()
