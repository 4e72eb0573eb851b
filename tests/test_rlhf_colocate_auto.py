"""`resources.colocate` / `resources.in_process` of the RL kinds: where the roles run, and that the
cheap default computes what separate actors compute.

Without a local Ray of this process's: auto keeps every role its own actor; explicit choices and the
errors where they cannot hold. On the session's local Ray (started as `llmray run` starts one): auto
puts the model roles in the driver's process, and a tiny PPO run there (policy host with the hf engine
and the reference, the critic sharing its reward model's host) gives the same per-iteration and
held-out metrics as separate actors (same seeds).
"""

from __future__ import annotations

import json

import pytest
import test_ppo
from pydantic import ValidationError
from test_ppo import config, make_ctx

from llmray import resources
from llmray.rlhf import roles

prompts_file = test_ppo.prompts_file  # the module fixture, shared

PER_ITERATION = ("reward_mean", "kl", "entropy", "response_length", "policy_loss", "value_loss", "grad_norm",
                 "logprob_mismatch")
FINAL = ("eval_reward_init", "eval_reward_final", "eval_kl_final", "kl_mean", "reward_mean_last")


def _cfg(kind="ppo", **resources):
    from llmray.stages import get_stage

    return get_stage(kind).Config.model_validate({"kind": kind, "init": "sft", "reward": "rm",
                                                  "rollout": {"engine": "hf"}, "resources": resources})


def test_placement_on_a_ray_this_process_did_not_start(monkeypatch):
    monkeypatch.setattr(resources, "local_cpu_ray", lambda: False)  # e.g. a cluster `llmray run` joined
    assert roles.placement(_cfg(), "ppo", ["rm"]).name == "separate"
    both = roles.placement(_cfg(colocate=True), "ppo", ["rm"])
    assert (both.name, both.engine_in_policy, both.critic_with) == ("colocated", True, "rm")
    assert roles.placement(_cfg("grpo", colocate=True), "grpo", ["rm"]).critic_with is None
    many = _cfg(colocate=True)
    many.rollout.replicas = 2  # several engines cannot live in the one policy host
    assert not roles.placement(many, "ppo", ["rm"]).engine_in_policy
    with pytest.raises(ValueError, match="resources.in_process: true needs a one-node"):
        roles.placement(_cfg(in_process=True), "ppo", ["rm"])
    with pytest.raises(ValidationError, match="resources.in_process: true runs the colocated roles"):
        _cfg(colocate=False, in_process=True)


def _run(tmp_path, name, tiny_causal_dir, tiny_reward_dir, prompts_file, resources):
    from llmray.stages import ppo

    ctx = make_ctx(tmp_path / name, name, "ppo", tiny_causal_dir, tiny_reward_dir)
    m = ppo.run(config("ppo", prompts_file, resources=resources), ctx).metrics
    recs = [json.loads(line) for line in (ctx.out_dir / "metrics.jsonl").read_text().splitlines()]
    return m, recs


def test_ppo_roles_in_the_driver_by_default_compute_what_separate_actors_do(ray_local, tiny_causal_dir,
                                                                           tiny_reward_dir, prompts_file,
                                                                           tmp_path):
    assert roles.placement(_cfg(), "ppo", ["rm"]).name == "in_process"  # auto on this process's local Ray
    sep_m, sep_recs = _run(tmp_path, "separate", tiny_causal_dir, tiny_reward_dir, prompts_file, {"colocate": False})
    loc_m, loc_recs = _run(tmp_path, "local", tiny_causal_dir, tiny_reward_dir, prompts_file,
                           {"colocate": "auto", "in_process": "auto"})
    assert (sep_m["roles"], loc_m["roles"]) == ("separate", "in_process")
    assert len(sep_recs) == len(loc_recs) == 3
    for a, b in zip(loc_recs, sep_recs):
        assert {k: a[k] for k in PER_ITERATION} == pytest.approx({k: b[k] for k in PER_ITERATION}, rel=1e-4, abs=1e-5)
    assert {k: loc_m[k] for k in FINAL} == pytest.approx({k: sep_m[k] for k in FINAL}, rel=1e-4, abs=1e-5)
    assert loc_m["fixed_cost"]["startup_s"] < sep_m["fixed_cost"]["startup_s"]
