"""The OpenAI-compatible endpoint on a real local Ray Serve, driven by the official `openai` client.

Two applications on the session's one Serve instance (conftest's `serve_port`):
  /          pipeline "demo": stages base, chat, gated (the align gate blocked it); API key required;
  /guarded   pipeline "guarded": one model behind a guardrail that refuses everything, with tiny
             in-flight / queue caps so overload answers (429 / 503) can be provoked.
The models are the random tiny Llama (transformers engine): tests check structure, not content.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
import types

import httpx
import openai
import pytest

from llmray.config import RayConfig
from llmray.serve_config import ServeConfig

KEY = "test-key-123"
KEY_ENV = "LLMRAY_TEST_SERVE_KEY"




def _fake_run(workdir, pipeline: str, stages: dict, model_dir) -> None:
    """Completed stage folders whose model/ is the tiny model; `stages` maps name -> extra metrics."""
    for name, metrics in stages.items():
        d = workdir / pipeline / name
        shutil.copytree(model_dir, d / "model")
        (d / "manifest.json").write_text(json.dumps({
            "name": name, "kind": "sft", "status": "completed", "finished": "2025-01-01T00:00:00+00:00",
            "outputs": {"model": "model"}, "metrics": metrics}))


def _pipe(name, workdir, **serve):
    return types.SimpleNamespace(name=name, workdir=str(workdir), ray=RayConfig(), stages={},
                                 serve=ServeConfig(**serve))


@pytest.fixture(scope="module")
def served(serve_port, tmp_path_factory, tiny_causal_dir):
    from llmray.serve.launch import start_serving, stop_serving

    workdir = tmp_path_factory.mktemp("serve-runs")
    gate = {"gate": {"status": "blocked", "reasons": ["refusal rate 0.2 < 0.9"]}}
    _fake_run(workdir, "demo", {"base": {}, "chat": {}, "gated": gate}, tiny_causal_dir)
    _fake_run(workdir, "guarded", {"chat": {}}, tiny_causal_dir)
    os.environ[KEY_ENV] = KEY
    common = {"port": serve_port, "engine": "hf", "num_cpus": 0.25, "ingress_num_cpus": 0.05}
    demo = _pipe("demo", workdir, models=["base", "chat", "gated"], api_key_env=KEY_ENV, max_tokens=64,
                 max_prompt_tokens=200, max_body_bytes=8192, **common)
    guarded = _pipe("guarded", workdir, models=["chat"], route_prefix="/guarded",
                    guardrail={"blocklist": ["(?s).*"], "message": "[withheld]"},
                    max_concurrent_requests=4, max_ongoing_requests=1, max_queued_requests=1, batch_size=1,
                    **common)
    t0 = time.time()
    info = start_serving(demo, echo=lambda m: None)
    ginfo = start_serving(guarded, echo=lambda m: None)
    print(f"\ndeployed two applications in {time.time() - t0:.1f}s")
    yield {"url": info["url"], "guarded_url": ginfo["url"], "info": info}
    stop_serving(guarded)
    stop_serving(demo)
    os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served["url"], api_key=KEY, max_retries=0, timeout=60)


def _hi(text="Hello!"):
    return [{"role": "user", "content": text}]


def test_start_serving_reports_the_url_and_default(served):
    assert served["url"].startswith("http://127.0.0.1:") and served["url"].endswith("/v1")
    assert served["info"]["default"] == "demo/chat"  # gated is last but blocked


def test_list_models(client):
    models = {m.id: m for m in client.models.list()}
    assert sorted(models) == ["demo/base", "demo/chat", "demo/gated"]
    assert all(m.object == "model" and m.owned_by == "llmray" for m in models.values())
    gated = models["demo/gated"].model_extra["llmray"]
    assert gated["blocked"] is True and gated["gate_reasons"] == ["refusal rate 0.2 < 0.9"]
    assert models["demo/chat"].model_extra["llmray"]["default"] is True
    assert client.models.retrieve("demo/base").id == "demo/base"


def test_chat_plain(client):
    r = client.chat.completions.create(model="demo/chat", messages=_hi(), max_tokens=6, temperature=0.7, seed=1)
    assert r.object == "chat.completion" and r.model == "demo/chat" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_plain_greedy(client):
    kw = {"model": "demo/chat", "messages": _hi("Tell me a story."), "max_tokens": 12, "temperature": 0}
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_completions_with_n_and_several_prompts(client):
    r = client.completions.create(model="demo/base", prompt=["def f(", "import "], max_tokens=4, n=2, seed=3)
    assert r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    chunks = list(client.completions.create(model="demo/base", prompt="x = ", max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_default_model_is_used_when_none_is_named(served):
    r = httpx.post(served["url"] + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"messages": _hi(), "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "demo/chat"
    by_stage = httpx.post(served["url"] + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "base", "messages": _hi(), "max_tokens": 2})
    assert by_stage.json()["model"] == "demo/base"  # a bare stage name is an alias of its id


@pytest.mark.parametrize("name", ["demo/nope", "/etc/passwd", "../demo/chat", "demo/chat/model"])
def test_unknown_model_is_404(client, name):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model=name, messages=_hi(), max_tokens=2)
    assert e.value.status_code == 404
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


def test_too_long_prompt_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo/chat", messages=_hi("word " * 300), max_tokens=2)
    assert e.value.status_code == 400 and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo/chat", messages=_hi(), max_tokens=65)  # cap is 64
    assert e.value.body["code"] == "max_tokens_too_large"


def test_bad_or_missing_api_key_is_401(served):
    bad = openai.OpenAI(base_url=served["url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="demo/chat", messages=_hi(), max_tokens=2)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(served["url"] + "/models").status_code == 401  # no Authorization header at all


def test_http_edges_answer_openai_error_json(served):
    url, auth = served["url"], {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(url + "/chat/completions", headers=auth,
                     json={"model": "demo/chat", "messages": _hi("x" * 10000)})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    broken = httpx.post(url + "/chat/completions", headers={**auth, "Content-Type": "application/json"},
                        content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    nowhere = httpx.get(url + "/nothing-here", headers=auth)
    assert nowhere.status_code == 404 and "error" in nowhere.json()
    health = httpx.get(url.removesuffix("/v1") + "/health")  # no key needed for probes
    assert health.status_code == 200 and len(health.json()["models"]) == 3


def test_compare_answers_side_by_side(served):
    r = httpx.post(served["url"] + "/compare", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"models": ["base", "demo/chat", "nope"], "messages": _hi(), "max_tokens": 4,
                         "temperature": 0})
    assert r.status_code == 404  # one unknown model: the whole request is refused, nothing runs
    r = httpx.post(served["url"] + "/compare", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"models": ["base", "demo/chat"], "prompt": "Once upon", "max_tokens": 4})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["model"] for x in results] == ["demo/base", "demo/chat"]
    assert all(x["finish_reason"] in ("stop", "length") and x["latency_ms"] > 0 for x in results)


def test_guardrail_screens_every_response(served):
    c = openai.OpenAI(base_url=served["guarded_url"], api_key="unused", max_retries=0, timeout=60)
    r = c.chat.completions.create(model="guarded/chat", messages=_hi(), max_tokens=8)  # the refusal: 7 tokens
    assert r.choices[0].message.content == "[withheld]" and r.choices[0].finish_reason == "content_filter"
    chunks = list(c.chat.completions.create(model="guarded/chat", messages=_hi(), max_tokens=8, temperature=0,
                                            stream=True))
    reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "" and reasons in (["content_filter"], ["stop"], ["length"])  # "" itself may pass
    done = c.completions.create(model="guarded/chat", prompt="x", max_tokens=3)
    assert done.choices[0].finish_reason == "content_filter"


def test_guardrail_refusal_honours_stop_max_tokens_and_n(served):
    c = openai.OpenAI(base_url=served["guarded_url"], api_key="unused", max_retries=0, timeout=60)
    r = c.completions.create(model="chat", prompt="a", stop=["e"], temperature=1.0, seed=3, n=3)
    assert [x.index for x in r.choices] == [0, 1, 2]
    assert all(x.finish_reason == "content_filter" and "e" not in x.text for x in r.choices)
    assert r.choices[0].text == "[withh"  # the refusal "[withheld]", cut where the stop string starts
    short = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}], max_tokens=1)
    assert short.choices[0].finish_reason == "content_filter"
    assert 0 < len(short.choices[0].message.content) < len("[withheld]")


def test_overload_is_429_or_503_json(served):
    """In-flight cap 4 at the ingress (429), 1 running + 1 queued at the model (503)."""
    body = {"model": "guarded/chat", "messages": _hi(), "max_tokens": 48, "temperature": 0.8}

    async def burst():
        async with httpx.AsyncClient(timeout=120) as h:
            return await asyncio.gather(*(h.post(served["guarded_url"] + "/chat/completions", json=body)
                                          for _ in range(12)))

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and set(codes) <= {200, 429, 503}
    assert 429 in codes or 503 in codes, codes
    for r in answers:
        if r.status_code != 200:
            assert r.json()["error"]["code"] in ("rate_limit_exceeded", "overloaded")


def test_load_100_concurrent_chats(served, record_property):
    """100 chats at once (loopback): no errors, every answer complete; p50/p95 recorded."""
    aclient = openai.AsyncOpenAI(base_url=served["url"], api_key=KEY, max_retries=0, timeout=120)

    async def one(i):
        t0 = time.perf_counter()
        r = await aclient.chat.completions.create(model="demo/chat", messages=_hi(f"question {i}"),
                                                  max_tokens=8, temperature=0.7, seed=i)
        return time.perf_counter() - t0, r

    async def run():
        t0 = time.perf_counter()
        out = await asyncio.gather(*(one(i) for i in range(100)))
        await aclient.close()
        return time.perf_counter() - t0, out

    wall, results = asyncio.run(run())
    lat = sorted(t for t, _ in results)
    assert len(results) == 100
    for _, r in results:
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 8
    p50, p95 = statistics.median(lat) * 1000, lat[94] * 1000
    health = httpx.get(served["url"].removesuffix("/v1") + "/health").json()
    batching = next(m["batching"] for m in health["models"] if m["id"] == "demo/chat")
    assert batching["largest_batch"] > 1  # dynamic batching really merged concurrent requests
    record_property("load100_p50_ms", round(p50, 1))
    record_property("load100_p95_ms", round(p95, 1))
    print(f"\n100 concurrent chats: wall {wall:.2f}s, p50 {p50:.0f} ms, p95 {p95:.0f} ms; batching {batching}")
