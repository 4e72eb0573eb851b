"""Zero-downtime promotion behind a served name, on a real local Ray Serve, through the `openai` client.

One application on the session's Serve instance (conftest's `serve_port`), module fixture:
  /          pipeline "prom": stages dpo, ppo (ppo = dpo with its final norm negated: its first logits are
             dpo's negated, so the greedy answers differ on any machine; two random seeds both copied
             the prompt's last token on one CI machine), broken (a model folder whose weights are garbage), gated (blocked by the
             align gate); `assistant` is a served name starting at dpo. Canary window 2 s.
A closed loop of client threads (bounded in count and time) keeps requests flowing while the
tests promote, roll back and fail a canary; no request may fail. (The guardrail refusal's stop,
max_tokens and n: tests/test_serve_app.py, on its guarded application.)
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import types

import openai
import pytest

from llmray.config import RayConfig
from llmray.serve_config import ServeConfig

PROMPT = "Hello"


def _stage(root, name, model_dir, fingerprint, metrics=None):
    d = root / name
    shutil.copytree(model_dir, d / "model")
    (d / "manifest.json").write_text(json.dumps({
        "name": name, "kind": "dpo", "status": "completed", "fingerprint": fingerprint,
        "finished": "2025-01-01T00:00:00+00:00", "outputs": {"model": "model"}, "metrics": metrics or {}}))


def _pipe(name, workdir, stages, **serve):
    kinds = {s: types.SimpleNamespace(kind="dpo") for s in stages}
    return types.SimpleNamespace(name=name, workdir=str(workdir), ray=RayConfig(), stages=kinds,
                                 serve=ServeConfig(**serve))


def _negated(model_dir, out_dir):
    """`model_dir`'s model with the final RMSNorm's weight negated: every first-step logit is the
    original's negated, so its greedy first token is the original's least likely one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.models import save_model

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        model.model.norm.weight.neg_()
    save_model(model, AutoTokenizer.from_pretrained(str(model_dir)), out_dir)
    return out_dir


@pytest.fixture(scope="module")
def promo(serve_port, tmp_path_factory, tiny_causal_dir):
    from llmray.serve.launch import start_serving, stop_serving

    workdir = tmp_path_factory.mktemp("promote-runs")
    root = workdir / "prom"
    other = _negated(tiny_causal_dir, tmp_path_factory.mktemp("ppo-model"))
    _stage(root, "dpo", tiny_causal_dir, "d" * 64)
    _stage(root, "ppo", other, "p" * 64)
    _stage(root, "broken", tiny_causal_dir, "b" * 64)
    (root / "broken" / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
    _stage(root, "gated", other, "g" * 64, {"gate": {"status": "blocked", "reasons": ["refusal rate 0.20 < 0.90"]}})
    common = {"port": serve_port, "engine": "hf", "num_cpus": 0.25, "ingress_num_cpus": 0.05, "max_tokens": 16}
    pipe = _pipe("prom", workdir, ["dpo", "ppo", "broken", "gated"], models=["dpo"], names={"assistant": "dpo"},
                 promote={"canary": 0.5, "window_s": 2, "min_requests": 3}, **common)
    info = start_serving(pipe, echo=lambda m: None)
    yield {"pipe": pipe, "url": info["url"], "root": root}
    stop_serving(pipe)


@pytest.fixture(scope="module")
def client(promo):
    return openai.OpenAI(base_url=promo["url"], api_key="unused", max_retries=0, timeout=60)


def _answer(client, model="assistant") -> str:
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0).choices[0].text


class Load:
    """A closed loop of `workers` client threads, each sending the next request when its answer arrives;
    bounded by `max_requests` and `max_s`. Records (start time, latency, text or exception)."""

    def __init__(self, url: str, workers: int = 3, max_requests: int = 2000, max_s: float = 120):
        self.client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        self.records: list[tuple[float, float, object]] = []
        self.stop, self.max_requests, self.deadline = threading.Event(), max_requests, time.time() + max_s
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(workers)]

    def _loop(self):
        while not self.stop.is_set() and len(self.records) < self.max_requests and time.time() < self.deadline:
            t0 = time.perf_counter()
            try:
                out = _answer(self.client)
            except Exception as e:  # noqa: BLE001 - every failure is counted, not raised in the thread
                out = e
            self.records.append((t0, time.perf_counter() - t0, out))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def between(self, t0: float, t1: float) -> list:
        return [r for r in self.records if t0 <= r[0] < t1]

    @property
    def failures(self) -> list:
        return [r[2] for r in self.records if isinstance(r[2], Exception)]


def _p95(records) -> float:
    lat = sorted(r[1] for r in records)
    return lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]


def test_models_list_the_name_with_its_version(client):
    cards = {m.id: m.model_extra["llmray"] for m in client.models.list()}
    assert cards["prom/assistant"]["current"] == {"stage": "dpo", "fingerprint": "d" * 64, "key": "dpo@dddddddddddd"}
    assert cards["prom/assistant"]["canary"] is None and cards["prom/dpo"]["stage"] == "dpo"


def test_gate_failed_stage_is_refused(promo):
    from llmray.serve.launch import http_json
    from llmray.serve.promote import promote
    from llmray.serve.versions import PromoteError

    with pytest.raises(PromoteError, match=r"align gate .* blocked it: refusal rate 0.20 < 0.90"):
        promote(promo["pipe"], "gated", "assistant")
    # The server checks again: a client that skips the CLI is refused too.
    code, body = http_json("POST", promo["url"].removesuffix("/v1") + "/admin/promote",
                           {"name": "assistant", "stage": "gated", "fingerprint": "g" * 64})
    assert code == 409 and "refusal rate 0.20 < 0.90" in body["error"]["message"]


def test_promotion_under_load_switches_answers_without_a_failed_request(promo, client):
    from llmray.serve.promote import promote
    from llmray.serve.versions import read_history

    dpo_answer = _answer(client)
    assert dpo_answer == _answer(client, "prom/dpo")  # the name serves dpo before the promotion
    with Load(promo["url"]) as load:
        time.sleep(3)
        t_swap = time.perf_counter()
        out = promote(promo["pipe"], "ppo", "assistant", canary=0.5, echo=lambda m: None)
        t_done = time.perf_counter()
        time.sleep(1.5)
    assert not load.failures, load.failures[:3]
    assert out["status"] == "completed", out
    before, during = load.between(0, t_swap), load.between(t_swap, t_done)
    after = [r[2] for r in load.between(t_done + 0.5, float("inf"))]
    ppo_answer = _answer(client)
    assert ppo_answer != dpo_answer  # different weights, different greedy answer
    assert after and set(after) == {ppo_answer}  # traffic fully on the new version
    assert {r[2] for r in during} <= {dpo_answer, ppo_answer} and ppo_answer in {r[2] for r in during}
    print(f"\nclosed loop, 3 clients: {len(load.records)} requests, 0 failed; p95 before "
          f"{_p95(before) * 1000:.0f} ms ({len(before)} req), during the canary swap "
          f"{_p95(during) * 1000:.0f} ms ({len(during)} req)")
    last = read_history(promo["root"])[-1]
    assert last["event"] == "promote" and last["outcome"] == "completed" and last["to"].startswith("ppo@")
    assert last["figures"]["canary"]["requests"] >= 3 and last["who"]
    from llmray.report import render_report

    assert "promotions-table" in render_report(promo["root"]) and last["to"] in render_report(promo["root"])
    card = client.models.retrieve("assistant").model_extra["llmray"]
    assert card["stage"] == "ppo" and card["fingerprint"] == "p" * 64 and card["previous"]["stage"] == "dpo"


def test_broken_canary_rolls_back_automatically(promo, client):
    from llmray.serve.promote import promote

    live = _answer(client)
    with Load(promo["url"], workers=2) as load:
        time.sleep(0.5)
        out = promote(promo["pipe"], "broken", "assistant", echo=lambda m: None)
        time.sleep(0.5)
    assert out["status"] == "rolled_back" and "load failed" in out["why"]
    assert not load.failures and {r[2] for r in load.records} == {live}
    assert client.models.retrieve("assistant").model_extra["llmray"]["last"]["outcome"] == "rolled_back"


def test_rollback_and_an_immediate_switch_reload_weights_in_place(promo, client):
    from llmray.serve.promote import cmd_rollback, promote
    from llmray.serve.versions import read_history

    ppo_answer = _answer(client)
    assert client.models.retrieve("assistant").model_extra["llmray"]["stage"] == "ppo"
    with Load(promo["url"], workers=2) as load:
        assert cmd_rollback(promo["pipe"], types.SimpleNamespace(to="assistant")) == 0
        time.sleep(0.5)
        dpo_answer = _answer(client)
        # canary 0: no watch, the live engine takes the new weights (same architecture and tokenizer)
        out = promote(promo["pipe"], "ppo", "assistant", canary=0, echo=lambda m: None)
        time.sleep(0.5)
    assert not load.failures
    assert dpo_answer == _answer(client, "prom/dpo") != ppo_answer  # rollback restored the previous answers
    assert read_history(promo["root"])[-2]["event"] == "rollback"
    assert out["status"] == "completed" and out["load"]["mode"] == "in-place weight reload"
    assert _answer(client) == ppo_answer


def test_auto_promotion_after_a_rerun(promo, client):
    from llmray.serve.promote import after_run

    man = promo["root"] / "ppo" / "manifest.json"
    manifest = json.loads(man.read_text())
    man.write_text(json.dumps(manifest | {"fingerprint": "q" * 64}))  # as if `llmray run` retrained ppo
    pipe = promo["pipe"]
    auto = types.SimpleNamespace(**vars(pipe))
    auto.serve = pipe.serve.model_copy(update={"promote": pipe.serve.promote.model_copy(update={"mode": "auto"})})
    said: list[str] = []
    with Load(promo["url"], workers=2, max_s=30) as load:
        after_run(auto, echo=said.append)
        deadline = time.time() + 20
        while client.models.retrieve("assistant").model_extra["llmray"]["state"] != "live" and time.time() < deadline:
            time.sleep(0.5)
    assert any("assistant -> ppo@qqqqqqqqqqqq: canary" in m for m in said), said
    assert not load.failures
    card = client.models.retrieve("assistant").model_extra["llmray"]
    assert card["fingerprint"] == "q" * 64 and card["last"]["outcome"] == "completed"

