"""Promotion without Ray: the serve.promote / serve.names config, the canary verdict, and NameRouter's
bookkeeping (routes, history, rollback) driven by a plain async loader standing in for the deployment."""

from __future__ import annotations

import asyncio
import json
import types

import pytest
from pydantic import ValidationError

from llmray.serve.versions import NameRouter, PromoteError, Stats, read_history, verdict
from llmray.serve_config import PromoteConfig, ServeConfig

CFG = PromoteConfig(canary=0.5, window_s=0.05, min_requests=2).model_dump()


def test_promote_config_shorthand_and_names():
    assert ServeConfig(models=["a"], promote="auto").promote.mode == "auto"
    assert ServeConfig(models=["a"]).promote.mode == "manual"
    with pytest.raises(ValidationError, match="canary"):
        PromoteConfig(canary=1.5)
    with pytest.raises(ValidationError, match="not valid names"):
        ServeConfig(models=["a"], names={"bad name": "a"})


def _stats(latencies, errors=0, blocked=0) -> Stats:
    s = Stats()
    s.latencies, s.errors, s.blocked = list(latencies), errors, blocked
    return s


def test_verdict_names_the_threshold_crossed():
    live = _stats([0.1] * 20)
    assert verdict(live, _stats([0.1] * 5), CFG) is None
    assert "only 1 canary requests" in verdict(live, _stats([0.1]), CFG)
    assert "error rate 0.500 > max_error_rate 0.0" in verdict(live, _stats([0.1] * 2, errors=2), CFG)
    assert "block rate 0.750 > max_block_rate 0.5" in verdict(live, _stats([0.1] * 4, blocked=3), CFG)
    assert "p95 latency 500.0 ms > max_latency_ratio 3.0" in verdict(live, _stats([0.5] * 4), CFG)


def _version(stage, fp, tmp_path):
    d = tmp_path / stage
    d.mkdir(exist_ok=True)
    return {"key": f"{stage}@{fp[:12]}", "stage": stage, "fingerprint": fp, "dir": str(d), "kind": "dpo"}


def _router(tmp_path, loads):
    async def load(name, version, replace):
        if "broken" in version["stage"]:
            raise OSError("no weights")
        loads.append((version["key"], replace))
        return {"mode": "test"}

    spec = {"run_dir": str(tmp_path), "settings": {"promote": CFG},
            "names": [{"name": "assistant", "id": "p/assistant", "version": _version("dpo", "d" * 64, tmp_path)}]}
    return NameRouter(spec, load)


def test_router_canary_completes_and_rollback_returns(tmp_path):
    loads: list = []
    r = _router(tmp_path, loads)
    ppo = _version("ppo", "p" * 64, tmp_path)

    async def scenario():
        started = await r.promote("assistant", ppo, None, "alice")
        assert started["status"] == "canary" and r.describe("assistant")["canary"]["stage"] == "ppo"
        picks = [r.pick("assistant")[0]["stage"] for _ in range(400)]
        assert 120 < picks.count("ppo") < 280  # about the canary share (0.5)
        with pytest.raises(PromoteError, match="already under way"):
            await r.promote("assistant", ppo, None, "bob")
        for key in ("dpo@dddddddddddd", "ppo@pppppppppppp") * 3:
            r.record(key, 0.01)
        await r.tasks["assistant"]
        assert r.describe("assistant")["current"]["stage"] == "ppo"
        back = await r.rollback("assistant", "carol")
        assert back["event"] == "rollback" and r.describe("assistant")["current"]["stage"] == "dpo"

    asyncio.run(scenario())
    assert loads == [("ppo@pppppppppppp", None), ("dpo@dddddddddddd", "ppo@pppppppppppp")]
    events = read_history(tmp_path)
    assert [(e["event"], e.get("outcome"), e["who"]) for e in events] == [
        ("canary", None, "alice"), ("promote", "completed", "alice"), ("rollback", "rolled_back", "carol")]
    assert events[1]["figures"]["canary"]["requests"] == 3
    # The ingress restarts: the name keeps what it served last.
    saved = json.loads((tmp_path / ".serve" / "routes.json").read_text())
    assert saved["assistant"]["current"]["stage"] == "dpo" and saved["assistant"]["previous"]["stage"] == "ppo"
    assert _router(tmp_path, []).describe("assistant")["previous"]["stage"] == "ppo"


def test_router_rolls_back_a_canary_that_fails_or_idles(tmp_path):
    r = _router(tmp_path, [])

    async def scenario():
        broken = await r.promote("assistant", _version("broken", "b" * 64, tmp_path), None, "a")
        assert broken["status"] == "rolled_back" and "load failed: OSError: no weights" in broken["why"]
        await r.promote("assistant", _version("ppo", "p" * 64, tmp_path), None, "a")
        r.record("ppo@pppppppppppp", None, error=True)  # one canary failure, then silence
        await r.tasks["assistant"]

    asyncio.run(scenario())
    last = read_history(tmp_path)[-1]
    assert last["outcome"] == "rolled_back" and "only 1 canary requests" in last["why"]
    assert r.describe("assistant")["current"]["stage"] == "dpo" and r.describe("assistant")["canary"] is None


def test_promote_refuses_a_name_that_is_not_served(tmp_path):
    from llmray.serve.promote import _default_name

    pipe = types.SimpleNamespace(serve=ServeConfig(models=["a"], names={"assistant": "a", "coder": "a"}))
    with pytest.raises(PromoteError, match="name one of serve.names"):
        _default_name(pipe, None)
    with pytest.raises(PromoteError, match="'x' is not one of serve.names"):
        _default_name(pipe, "x")
    assert _default_name(pipe, "coder") == "coder"


def test_validate_checks_served_names(tmp_path):
    from llmray.config import ConfigError
    from llmray.pipeline import load_pipeline

    with pytest.raises(ConfigError, match="serve.names.assistant: no stage named 'nope'"):
        load_pipeline("pipeline.yaml", [f"workdir={tmp_path}", "serve.names.assistant=nope"])


class _Runner:
    """A loaded version as the model deployment holds it (only what its bookkeeping touches)."""

    def __init__(self, model_dir):
        self.dir, self.closed = model_dir, False
        self.engine = types.SimpleNamespace(close=self._close)

    async def start(self):
        pass

    async def _close(self):
        self.closed = True


def test_a_request_routed_before_a_promotion_does_not_retire_the_loaded_canary():
    """The race CI hit: a request whose `live` list was taken before the canary was set arrives after the
    canary's load; it must not retire the canary (which would then be answered by its predecessor)."""
    from llmray.serve.app import ModelServer

    server = object.__new__(ModelServer.func_or_class)
    dpo = _Runner("/d")
    server.model_id, server.runner, server._new_runner = "p/assistant", dpo, _Runner
    server.versions, server.dirs, server.aliases, server.loaded_gen = {"dpo": dpo}, {"dpo": "/d"}, {}, {}
    server.busy, server._loading = {}, asyncio.Lock()

    def body(key, live, gen):
        return {"version": {"key": key, "dir": f"/{key[0]}"}, "live": live, "gen": gen}

    async def scenario():
        # NameRouter.promote: generation 1 while loading, 2 once the canary is routed, 3 when it settles.
        await server.load({"key": "ppo", "dir": "/p"}, None, 1)
        assert await server._runner_for(body("dpo", ["dpo"], 0)) is dpo  # routed before the promotion
        ppo = server.versions.get("ppo")
        assert ppo is not None and not ppo.closed  # still loaded
        assert await server._runner_for(body("ppo", ["dpo", "ppo"], 2)) is ppo
        assert await server._runner_for(body("ppo", ["ppo"], 3)) is ppo  # completed: dpo is retired now
        assert "dpo" not in server.versions and server._resolve("dpo") == "ppo"
        await asyncio.sleep(0)
        assert dpo.closed
        # A rolled-back canary is retired by the first request of the settled generation.
        await server.load({"key": "bad", "dir": "/b"}, None, 4)
        assert await server._runner_for(body("ppo", ["ppo"], 4)) is ppo and "bad" in server.versions
        assert await server._runner_for(body("ppo", ["ppo"], 6)) is ppo and "bad" not in server.versions

    asyncio.run(scenario())
