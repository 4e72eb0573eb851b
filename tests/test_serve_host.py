"""Where the model runs (llmray.serve.replica.single_deployment) and the in-replica host's admission
(llmray.serve.host.InProcess): pure asyncio, no Ray started, no model."""

from __future__ import annotations

import asyncio
import types

import pytest

from llmray.serve.replica import ingress_options, model_options, single_deployment
from llmray.serve_config import ServeConfig


def _spec(models: list[str], names: dict | None = None, **settings) -> dict:
    s = ServeConfig(models=models, names=names or {}, **settings).model_dump(mode="json")
    return {"models": [{"id": f"p/{m}", "stage": m, "dir": f"/runs/p/{m}/model"} for m in models],
            "names": [{"name": n, "id": f"p/{n}"} for n in (names or {})], "settings": s}


def test_one_model_without_names_runs_in_the_ingress_replica():
    one = _spec(["chat"], num_cpus=0.5, ingress_num_cpus=0.1, replicas=2, max_concurrent_requests=10)
    assert single_deployment(one)
    assert not single_deployment(_spec(["chat", "dpo"]))
    assert not single_deployment(_spec(["chat"], names={"assistant": "chat"}))  # versions need their router
    opts = ingress_options(one, "hf")
    # The ingress does the model's work: its reservation, replicas and patient health check, plus its own CPU.
    assert opts["ray_actor_options"]["num_cpus"] == pytest.approx(0.6)
    assert opts["num_replicas"] == 2 and opts["health_check_timeout_s"] == 60
    assert opts["max_ongoing_requests"] == 10 + 64 and "max_queued_requests" not in opts
    assert opts["name"] == "openai-ingress"
    several = _spec(["chat", "dpo"], num_cpus=0.5, ingress_num_cpus=0.1, replicas=2)
    opts = ingress_options(several, "hf")
    assert opts["num_replicas"] == 1 and opts["ray_actor_options"]["num_cpus"] == 0.1
    assert model_options(several["models"][0], several["settings"], "hf")["num_replicas"] == 2


def test_in_process_host_keeps_the_model_replica_limits():
    """max_ongoing_requests run, max_queued_requests wait, the next is refused with 503 at once."""
    from llmray.serve.host import InProcess
    from llmray.serve.protocol import APIError

    release = asyncio.Event()
    started: list[int] = []

    async def generate(body):
        started.append(body["i"])
        await release.wait()
        return {"i": body["i"]}

    async def stream(body):
        started.append(body["i"])
        await release.wait()
        yield {"i": body["i"]}

    host = types.SimpleNamespace(model_id="p/chat", generate=generate, stream=stream)

    async def scenario():
        h = InProcess(host, running=2, queued=1)
        calls = [asyncio.create_task(h.generate({"i": i})) for i in range(3)]
        await asyncio.sleep(0.01)
        assert started == [0, 1]  # two run, one waits
        with pytest.raises(APIError) as e:
            await h.generate({"i": 3})
        assert e.value.status == 503 and e.value.body()["error"]["code"] == "overloaded"
        release.set()
        assert [c["i"] for c in await asyncio.gather(*calls)] == [0, 1, 2]
        assert [x async for x in h.stream({"i": 4})] == [{"i": 4}]
        assert h.waiting == 0 and not h.slots.locked()

    asyncio.run(scenario())
