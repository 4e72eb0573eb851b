"""`resources.colocate` / `resources.in_process` of the RL kinds: where the roles run.

Without a local Ray of this process's: auto keeps every role its own actor; explicit choices and the
errors where they cannot hold. On the session's local Ray (started as `llmray run` starts one) auto puts
the model roles in the driver's process; that a tiny PPO run there (policy host with the hf engine and
the reference, the critic sharing its reward model's host) gives the same per-iteration and held-out
metrics as separate actors (same seeds) is checked in tests/test_ppo.py, against its separate-actor run
(the one whose rollout actor is killed), instead of a second separate-actor run here.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmray import resources
from llmray.rlhf import roles


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
