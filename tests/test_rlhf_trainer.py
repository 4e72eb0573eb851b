"""The RL trainers on the shared training code, without Ray (tiny random model, CPU).

- the policy trainer's learning rate follows `optim:`'s warmup + schedule across its optimizer steps
  (one `train_step` per minibatch), and the default is the constant lr RL always had;
- a checkpoint carries the schedule: a trainer restored from it takes the same next step;
- `optim.decay` picks the weight-decay groups; the roles are typed specs that pickle;
- `optim.warmup_steps` longer than the run is a config error naming the field.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from test_rlhf_fixed_cost import _policy_batch

from llmray.rlhf.config import Optim
from llmray.rlhf.trainer import ModelRole, PolicyWorker
from llmray.train.optim import lr_factor, param_groups


def _worker(model_dir, steps: int = 6, **optim) -> PolicyWorker:
    o = Optim(**{"lr": 1e-3, "epochs": 2, "minibatch_size": 4, "micro_batch_size": 2, **optim})
    return PolicyWorker(ModelRole(str(model_dir), True, o, steps=steps), 1.0, "ppo")


def _train(worker, batch, iteration: int) -> dict:
    old = worker.logprobs(batch)["logprobs"]
    return worker.train({**batch, "old_logprobs": old}, iteration=iteration)


def test_policy_lr_follows_warmup_and_schedule(tiny_causal_dir):
    batch = _policy_batch(tiny_causal_dir, n=4)
    cosine = _worker(tiny_causal_dir, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    constant = _worker(tiny_causal_dir)
    seen_cos, seen_const = [], []
    for it in range(3):  # 2 epochs x 1 minibatch = 2 optimizer steps per iteration
        seen_cos.append(_train(cosine, batch, it)["lr"])
        seen_const.append(_train(constant, batch, it)["lr"])
    # the record holds the mean lr of the iteration's two steps
    want = [1e-3 * (lr_factor(2 * i, 6, 2, 0.1, "cosine") + lr_factor(2 * i + 1, 6, 2, 0.1, "cosine")) / 2
            for i in range(3)]
    assert seen_cos == pytest.approx(want) and seen_cos[0] < seen_cos[1]
    assert seen_const == [1e-3] * 3


def test_checkpoint_restores_optimizer_and_schedule(tiny_causal_dir, tmp_path):
    batch = _policy_batch(tiny_causal_dir, n=4)
    a = _worker(tiny_causal_dir, schedule="cosine", warmup_steps=1)
    _train(a, batch, 0)
    a.save_checkpoint(str(tmp_path), "policy")
    b = _worker(tiny_causal_dir, schedule="cosine", warmup_steps=1)
    b.load_checkpoint(str(tmp_path), "policy")
    sa, sb = _train(a, batch, 1), _train(b, batch, 1)
    assert sa == pytest.approx(sb, rel=1e-6) and sa["lr"] < 1e-3
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q)


def test_decay_groups_and_typed_roles(tiny_causal_dir):
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    (every,) = param_groups(model, 0.1, "all")
    assert len(every["params"]) == 5 and every["weight_decay"] == 0.1
    decay, no_decay = param_groups(model, 0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 4
    role = ModelRole(str(tiny_causal_dir), True, Optim(decay="matrices", weight_decay=0.1), steps=6, seed=3)
    assert pickle.loads(pickle.dumps(role)) == role
    worker = PolicyWorker(role, 1.0, "ppo")
    assert [g["weight_decay"] for g in worker.opt.param_groups] == [0.1, 0.0]


def test_warmup_longer_than_the_run_is_a_config_error():
    from test_ppo import config

    def optim(warmup: int) -> dict:
        return {"epochs": 2, "minibatch_size": 2, "micro_batch_size": 2, "warmup_steps": warmup}

    cfg = config("ppo", "builtin:prompts", iterations=2, optim=optim(8))
    assert cfg.optimizer_steps() == 2 * 2 * 2  # iterations x epochs x (4 samples / minibatch 2)
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        config("ppo", "builtin:prompts", iterations=2, optim=optim(9))


def test_engine_options_are_typed_from_the_yaml_blocks():
    """A rollout engine is built from `EngineOptions` (typed, picklable), taken from ppo's `rollout:` or
    constitution's `engine:` block: the engine's own fields only, the stage's context length added."""
    from llmray.rlhf.config import Rollout
    from llmray.rlhf.rollout import EngineOptions
    from llmray.stages.constitution import Engine

    opts = EngineOptions.of(Rollout(replicas=3, dtype="bfloat16", kv_cache_gb=2.0), max_model_len=320)
    assert opts == EngineOptions(max_model_len=320, dtype="bfloat16", kv_cache_gb=2.0, gpu_memory_utilization=0.4)
    assert pickle.loads(pickle.dumps(opts)) == opts  # it travels to the rollout actors
    cai = EngineOptions.of(Engine(hf_batch_size=8), max_model_len=Engine().max_model_len)
    assert (cai.hf_batch_size, cai.max_model_len, cai.gpu_memory_utilization) == (8, 1024, 0.5)
    with pytest.raises(TypeError):
        EngineOptions(max_model_len=64, replicas=2)  # not an engine option
