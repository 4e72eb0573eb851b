"""Fixed-cost cuts of the RL stages change no results (real local Ray, tiny random models).

A tiny GRPO run (hf engine, one PPO epoch, one optimizer step per iteration: the old log-prob pass
is skipped because the policy is on-policy and its ratio is exactly 1) with the policy, reference
and engine in separate actors, and the same run colocated (`resources.colocate`: reference and
generation inside the policy actor; in_process false, tests/test_ppo.py runs the PPO roles
in the driver), give the same per-iteration and held-out metrics (same seeds). The manifest metrics carry the
stage's fixed cost. Without Ray: the on-policy update equals the one against a separate pass.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_ppo
from test_ppo import config, make_ctx

prompts_file = test_ppo.prompts_file  # the module fixture, shared

ONE_STEP = {"batch_size": 2, "group_size": 2, "iterations": 2, "num_eval": 2,
            "optim": {"epochs": 1, "minibatch_size": 4, "micro_batch_size": 4}}

PER_ITERATION = ("reward_mean", "kl", "entropy", "response_length", "policy_loss", "grad_norm", "kl_loss",
                 "logprob_mismatch")
FINAL = ("eval_reward_init", "eval_reward_final", "eval_kl_final", "kl_mean", "reward_mean_last",
         "logprob_mismatch_mean")


def _policy_batch(tok_dir, n=4, p_len=5, r_len=6, seed=0):
    from llmray.rlhf.batch import pack

    rng = np.random.default_rng(seed)
    prompts = [rng.integers(5, 1000, p_len - i % 2).tolist() for i in range(n)]
    responses = [rng.integers(5, 1000, r_len - i % 3).tolist() for i in range(n)]
    batch = pack(prompts, responses, 0)
    batch["advantages"] = (rng.standard_normal((n, 1)) * batch["response_mask"]).astype(np.float32)
    batch["ref_logprobs"] = (-7.0 * batch["response_mask"]).astype(np.float32)
    return batch


def test_on_policy_update_equals_the_update_against_a_separate_old_logprob_pass(tiny_causal_dir):
    """One optimizer step: the old log-probs taken from the training forward itself give the same loss,
    gradients, weights and figures as those of a separate no-grad pass (the pass the driver skips)."""
    import torch

    from llmray.rlhf.config import Optim
    from llmray.rlhf.trainer import ModelRole, PolicyWorker

    role = ModelRole(str(tiny_causal_dir), True, Optim(lr=1e-3, epochs=1, minibatch_size=4, micro_batch_size=2))
    batch = _policy_batch(tiny_causal_dir)
    separate = PolicyWorker(role, 1.0, "grpo")
    old = separate.logprobs(batch)
    stats_sep = separate.train({**batch, "old_logprobs": old["logprobs"]}, kl_coef=0.1)
    fused = PolicyWorker(role, 1.0, "grpo")
    stats_fused = fused.train(batch, kl_coef=0.1)
    np.testing.assert_allclose(stats_fused.pop("logprobs"), old["logprobs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats_fused.pop("entropy"), old["entropy"], rtol=1e-5, atol=1e-6)
    assert stats_fused == pytest.approx(stats_sep, rel=1e-5, abs=1e-7)
    for a, b in zip(fused.model.parameters(), separate.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="one optimizer step"):
        fused.train(_policy_batch(tiny_causal_dir, n=8), kl_coef=0.1)


def _run(tmp_path, name, tiny_causal_dir, tiny_reward_dir, prompts_file, **over):
    from llmray.stages import grpo

    ctx = make_ctx(tmp_path / name, name, "grpo", tiny_causal_dir, tiny_reward_dir)
    m = grpo.run(config("grpo", prompts_file, **{**ONE_STEP, **over}), ctx).metrics
    recs = [json.loads(line) for line in (ctx.out_dir / "metrics.jsonl").read_text().splitlines()]
    return m, recs


def _figures(m: dict, recs: list[dict]) -> dict:
    return {"final": {k: m[k] for k in FINAL}, "iterations": [{k: r[k] for k in PER_ITERATION} for r in recs]}


def test_grpo_skipped_old_logprobs_and_colocation_keep_the_metrics(ray_local, tiny_causal_dir, tiny_reward_dir,
                                                                   prompts_file, tmp_path):
    sep_m, sep_recs = _run(tmp_path, "separate", tiny_causal_dir, tiny_reward_dir, prompts_file)
    col_m, col_recs = _run(tmp_path, "colocated", tiny_causal_dir, tiny_reward_dir, prompts_file,
                           resources={"colocate": True, "in_process": False})  # shared actors
    separate, colocated = _figures(sep_m, sep_recs), _figures(col_m, col_recs)
    assert len(separate["iterations"]) == len(colocated["iterations"]) == 2
    for a, b in zip(colocated["iterations"], separate["iterations"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    assert colocated["final"] == pytest.approx(separate["final"], rel=1e-4, abs=1e-5)
    for m in (sep_m, col_m):
        fc = m["fixed_cost"]
        # the export mostly overlaps the final evaluation, so its own wait may round to 0
        assert fc["startup_s"] > 0 and fc["eval_s"] > 0 and fc["export_s"] >= 0
        assert fc["wall_s"] >= fc["work_s"] + fc["startup_s"]
