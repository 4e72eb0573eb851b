"""`ppo` / `grpo` configs: defaults validate, bad values are refused with the field named (no Ray)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmray.stages import STAGES, get_stage


def _cfg(kind, **kw):
    return get_stage(kind).Config.model_validate({"kind": kind, "init": "chat", "reward": "rm", **kw})


def test_kinds_registered_with_inputs():
    assert STAGES["ppo"] == "llmray.stages.ppo" and STAGES["grpo"] == "llmray.stages.grpo"
    for kind in ("ppo", "grpo"):
        cfg = _cfg(kind)
        assert cfg.input_refs() == {"init": ["chat"], "reward": ["rm"]}
        assert "reward" in cfg.INPUTS["reward"] and "sft" in cfg.INPUTS["init"]
        assert get_stage(kind).VERSION


def test_grpo_defaults_and_samples():
    g = _cfg("grpo", group_size=4, batch_size=8)
    assert g.samples_per_iteration() == 32 and g.kl.estimator == "k3"
    assert _cfg("ppo").critic.init == "reward"


@pytest.mark.parametrize("kind,kw,field", [
    ("ppo", {"optim": {"minibatch_size": 64}}, "minibatch_size"),
    ("ppo", {"optim": {"minibatch_size": 8, "micro_batch_size": 16}}, "micro_batch_size"),
    ("ppo", {"generation": {"temperature": 0}}, "temperature"),
    ("ppo", {"generation": {"stop": []}}, "stop"),
    ("ppo", {"rollout": {"engine": "tgi"}}, "engine"),
    ("ppo", {"kl": {"estimator": "k9"}}, "estimator"),
    ("ppo", {"resources": {"rollout": {"num_cpus": 0}}}, "num_cpus"),
    ("ppo", {"prompts": "builtin:nope"}, "prompts"),
    ("ppo", {"critic": {"lam": 2}}, "lam"),
    ("grpo", {"group_size": 1}, "group_size"),
    ("grpo", {"unknown_key": 1}, "unknown_key"),
])
def test_bad_values_are_refused(kind, kw, field):
    with pytest.raises(ValidationError) as e:
        _cfg(kind, **kw)
    assert field in str(e.value)


def test_pipeline_validates_with_ppo_and_grpo(tiny_causal_dir):
    from llmray.config import ConfigError
    from llmray.pipeline import parse_pipeline

    raw = {"name": "p", "stages": {"chat": {"kind": "sft", "from": str(tiny_causal_dir), "data": "builtin:instruct"},
                                   "rm": {"kind": "reward", "init": "chat"},
                                   "ppo": {"kind": "ppo", "init": "chat", "reward": "rm"},
                                   "grpo": {"kind": "grpo", "init": "ppo", "reward": "rm"}}}
    pipe = parse_pipeline(raw)
    assert pipe.stages["grpo"].init == "ppo"
    bad = {"name": "p", "stages": {**raw["stages"], "ppo": {"kind": "ppo", "init": "chat", "reward": "chat"}}}
    with pytest.raises(ConfigError, match="reward"):
        parse_pipeline(bad)
