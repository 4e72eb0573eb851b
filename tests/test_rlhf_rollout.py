"""Rollout engines as Ray actors: after a weight sync the engine samples from the trainer's weights.

The trainer actor holds model B, the engine starts from model A (different random weights).
Before the sync the engine's log-probs of its own samples disagree with the trainer's; after
the trainer's safetensors bytes are loaded they agree (float32 on CPU), and vLLM's greedy
output equals transformers' greedy output of B.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmray.resources import ActorResources
from llmray.rlhf.actors import RayActorGroup
from llmray.rlhf.batch import pack
from llmray.rlhf.config import Optim, Rollout
from llmray.rlhf.rollout import EngineOptions, RolloutGroup, RolloutWorker
from llmray.rlhf.trainer import ModelRole, PolicyWorker

OPTIM = {"lr": 1e-4, "critic_lr": 1e-4, "weight_decay": 0.0, "max_grad_norm": 1.0, "epochs": 1,
         "minibatch_size": 4, "micro_batch_size": 4, "clip": 0.2, "entropy_coef": 0.0}


@pytest.fixture(scope="module")
def model_b(tmp_path_factory, tiny_tokenizer_dir):
    from llmray.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("causal_b"), "causal", seed=1, tokenizer_dir=tiny_tokenizer_dir)


def _prompts(model_dir):
    from transformers import AutoTokenizer

    from llmray.chat import stop_token_ids

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False)
               for q in ("What does json.load do?", "Explain os.path.join.", "hi")]
    return tok, prompts, stop_token_ids(tok)


def _mismatch(samples, trainer, prompts, pad_id):
    flat = [s[0] for s in samples]
    batch = pack(prompts, [s["ids"] for s in flat], pad_id)
    lp = trainer.run("logprobs", batch, timeout=120)[0]["logprobs"]
    return max(float(np.abs(np.array(s["logprobs"]) - lp[i, : len(s["ids"])]).max()) for i, s in enumerate(flat))


def _hf_greedy(model_dir, prompts, stop, n):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    out = []
    for p in prompts:
        g = model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=stop)
        out.append(g[0, len(p):].tolist())
    return out


def _sync_check(engine, ray_local, tiny_causal_dir, model_b, tmp_path):
    import logging

    tok, prompts, stop = _prompts(tiny_causal_dir)
    cfg = Rollout(engine=engine, max_restarts=1, sync_timeout_s=60)
    opts = EngineOptions.of(cfg, max_model_len=256)
    rollout = RayActorGroup("rollout", RolloutWorker, ActorResources(num_cpus=0.5), 1,
                            args=(str(tiny_causal_dir), engine, opts, 0, str(tmp_path / "engine"), 2),
                            max_restarts=1, ready_timeout_s=120)
    trainer = RayActorGroup("policy", PolicyWorker, ActorResources(num_cpus=0.5),
                            kwargs={"role": ModelRole(str(model_b), True, Optim(**OPTIM))}, ready_timeout_s=120)
    try:
        rollout.wait_ready()
        trainer.wait_ready()
        group = RolloutGroup(rollout, cfg, logging.getLogger("test"))
        sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 12, "stop_ids": stop}
        before = _mismatch(group.generate(prompts, 1, sampling, seed=3), trainer, prompts, tok.pad_token_id)
        secs = group.sync(trainer.async_run("export_weights")[0], version=1)
        after = _mismatch(group.generate(prompts, 1, sampling, seed=3), trainer, prompts, tok.pad_token_id)
        assert before > 0.05, before  # A's samples scored by B: different models
        assert after < 1e-3, after  # the engine now serves B's weights
        assert secs < 30
        greedy = None
        if engine == "vllm":
            g = group.generate(prompts, 1, {**sampling, "temperature": 0.0}, seed=0)
            greedy = [s[0]["ids"] for s in g]
            assert greedy == _hf_greedy(model_b, prompts, stop, 12)
        # a sync that cannot finish in time fails with a clear error, not a hang
        group.cfg = Rollout(engine=engine, sync_timeout_s=1e-6)
        with pytest.raises(TimeoutError, match="weight sync"):
            group.sync(trainer.async_run("export_weights")[0], version=2)
        return before, after, greedy
    finally:
        rollout.shutdown()
        trainer.shutdown()


def test_hf_engine_weight_sync(ray_local, tiny_causal_dir, model_b, tmp_path):
    _sync_check("hf", ray_local, tiny_causal_dir, model_b, tmp_path)


@pytest.mark.vllm
def test_vllm_engine_weight_sync_matches_trainer(ray_local, tiny_causal_dir, model_b, tmp_path):
    import vllm  # noqa: F401 - installed by `make setup`; fail loudly if not
    _sync_check("vllm", ray_local, tiny_causal_dir, model_b, tmp_path)


@pytest.mark.integration  # imports vLLM (~5 s): not in the fast tier
@pytest.mark.vllm
def test_vllm_model_class_is_registered_in_process(tiny_causal_dir, monkeypatch):
    """On CPU the rollout engine registers the folder's model class itself, so vLLM inspects it in this
    process instead of in a fresh Python importing torch and vLLM (~10 s of the engine's start)."""
    import subprocess

    from vllm import ModelRegistry

    from llmray.generate import register_in_process

    assert register_in_process(str(tiny_causal_dir)) == ["LlamaForCausalLM"]

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"vLLM started a subprocess: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    info = ModelRegistry.models["LlamaForCausalLM"].inspect_model_cls()
    assert info.is_text_generation_model and not info.is_pooling_model
