"""The model side of a request: one served stage or name, its loaded versions, and how the ingress calls it.

`ModelHost` holds a ModelRunner per loaded *version* (llmray.serve.promote). It runs either as its own
Serve deployment (`app.ModelServer`, reached through a DeploymentHandle: several models side by side,
served names) or inside the ingress replica itself (one model, no names: the common case, no second
actor hop). The ingress talks to both through the same four calls, `Remote` or `InProcess`:

  generate(body) -> dict · stream(body) -> async iterator · load(version, replace, gen) · info()

A request body carries {"version": {"key", "dir"}, "live": [keys], "gen"} for a served name; a version
not loaded yet is loaded on first use (another replica, a restart), and versions no longer live are
closed once idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from ray import serve

from llmray.serve.engines import ModelRunner, same_architecture
from llmray.serve.protocol import APIError
from llmray.serve.replica import replica_resources

log = logging.getLogger("llmray.serve")


class ModelHost:
    """One stage's model (and, for a served name, its versions) behind ModelRunners; see module doc."""

    async def setup(self, model: dict, engine: str, settings: dict) -> None:
        self.model_id, self.engine_kind, self.settings = model["id"], engine, settings
        threads = replica_resources(settings).threads
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.runner = self._new_runner(model["dir"])
        if self.runner.engine.name == "hf":
            # Dynamic batching: @serve.batch groups requests arriving together; several groups may
            # be in flight, and the engine merges all groups waiting into its next batch.
            self._batched.set_max_batch_size(settings["batch_size"])
            self._batched.set_batch_wait_timeout_s(settings["batch_wait_ms"] / 1000)
            self.runner.engine.submit = self._batched
        await self.runner.start()
        key = (model.get("version") or {}).get("key")
        self.versions = {key: self.runner} if key else {}
        self.dirs = {key: model["dir"]} if key else {}
        self.aliases: dict[str, str] = {}  # a key reloaded in place -> the key it became
        self.loaded_gen: dict[str, int] = {}  # a version -> the route generation it was loaded at
        self.busy: dict[int, int] = {}
        self._loading = asyncio.Lock()

    def _new_runner(self, model_dir: str) -> ModelRunner:
        s = self.settings
        return ModelRunner(self.model_id, model_dir, self.engine_kind, s["max_prompt_tokens"], s["vllm"],
                           s["batch_size"])

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0, max_concurrent_batches=8)
    async def _batched(self, reqs):
        async for step in self.runner.engine.stream_batch(reqs):
            yield step

    # ------------------------------------------------------------ versions

    async def load(self, version: dict, replace: str | None = None, gen: int = 0) -> dict:
        """Load a version next to the live ones, or over `replace` in place (vLLM, same architecture).
        `gen`: the name's route generation (NameRouter) when the load was asked for."""
        async with self._loading:
            if version["key"] in self.versions:
                return {"mode": "already loaded", "load_s": 0.0}
            t0 = time.perf_counter()
            old = self.versions.get(replace) if replace else None
            if old is not None and hasattr(old.engine, "reload") and same_architecture(self.dirs[replace],
                                                                                         version["dir"]):
                await old.engine.reload(version["dir"])
                self.versions[version["key"]] = self.versions.pop(replace)
                self.dirs[version["key"]] = self.dirs.pop(replace) and version["dir"]
                self.aliases[replace] = version["key"]
                mode = "in-place weight reload"
            else:
                runner = await asyncio.to_thread(self._new_runner, version["dir"])
                await runner.start()  # its warm-up generation: a broken model fails here, not on traffic
                self.versions[version["key"]], self.dirs[version["key"]] = runner, version["dir"]
                mode = "new engine"
            self.aliases.pop(version["key"], None)
            self.loaded_gen[version["key"]] = gen
            log.info("%s: loaded %s (%s)", self.model_id, version["key"], mode)
            return {"mode": mode, "load_s": round(time.perf_counter() - t0, 3)}

    async def _runner_for(self, body: dict) -> ModelRunner:
        v = body.get("version")
        if v is None:
            return self.runner
        gen = body.get("gen", 0)
        key = self._resolve(v["key"])
        if key not in self.versions:
            await self.load(v, gen=gen)
            key = v["key"]
        live = [self._resolve(k) for k in body.get("live") or ()]
        # A request's `live` list is as old as its route generation: a version loaded at that generation
        # or later (a promotion the request was routed before) is not retired by it, or a canary loaded
        # while older requests were still on their way would be dropped and answered by its predecessor.
        for old in [k for k in self.versions if live and k not in live and self.loaded_gen.get(k, -1) < gen]:
            self._retire(old, live[0])  # live[0]: the name's current version
        return self.versions[key]

    def _resolve(self, key: str) -> str:
        for _ in range(8):  # a version reloaded in place or retired answers as its successor
            if key in self.versions or key not in self.aliases:
                break
            key = self.aliases[key]
        return key

    def _retire(self, key: str, successor: str) -> None:
        """Drop a version no longer live; requests for it still on their way get its successor."""
        runner = self.versions.pop(key)
        self.dirs.pop(key, None)
        self.loaded_gen.pop(key, None)
        self.aliases[key] = successor
        if not self.busy.get(id(runner)):
            asyncio.get_running_loop().create_task(runner.engine.close())

    @asynccontextmanager
    async def _use(self, body: dict):
        runner = await self._runner_for(body)
        self.busy[id(runner)] = self.busy.get(id(runner), 0) + 1
        try:
            yield runner
        finally:
            self.busy[id(runner)] -= 1
            if not self.busy[id(runner)] and runner not in self.versions.values() and runner is not self.runner:
                await runner.engine.close()

    # ------------------------------------------------------------ requests

    async def generate(self, body: dict) -> dict:
        if "version" not in body:  # no versions to route between: straight to the runner
            return await self.runner.generate(body)
        async with self._use(body) as runner:
            return await runner.generate(body)

    async def stream(self, body: dict):
        async with self._use(body) as runner:
            async for item in runner.stream(body):
                yield item

    async def info(self) -> dict:
        return {"id": self.model_id, "engine": self.runner.engine.name, "context": self.runner.context,
                "batching": getattr(self.runner.engine, "stats", None), "versions": sorted(self.versions)}


class Remote:
    """A model deployment reached through its DeploymentHandle (another actor)."""

    def __init__(self, handle):
        self.handle = handle

    async def generate(self, body: dict) -> dict:
        return await self.handle.generate.remote(body)

    def stream(self, body: dict):
        return self.handle.options(stream=True).stream.remote(body)

    async def load(self, version: dict, replace: str | None, gen: int) -> dict:
        return await self.handle.load.remote(version, replace, gen)

    async def info(self) -> dict:
        return await self.handle.info.remote()


class InProcess:
    """A ModelHost inside the calling replica: the same calls, no actor hop, no serialisation. What Serve
    does for a model deployment is kept: at most `running` requests at once (max_ongoing_requests), at
    most `queued` more waiting (max_queued_requests); past that a request is refused with 503 at once."""

    def __init__(self, host: ModelHost, running: int, queued: int):
        self.host, self.queued = host, queued
        self.slots = asyncio.Semaphore(running)
        self.waiting = 0

    @asynccontextmanager
    async def _admitted(self):
        if self.slots.locked():
            if self.waiting >= self.queued:
                raise APIError(503, f"{self.host.model_id} is overloaded; retry shortly", "overloaded")
            self.waiting += 1
            try:
                await self.slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self.slots.acquire()
        try:
            yield
        finally:
            self.slots.release()

    async def generate(self, body: dict) -> dict:
        async with self._admitted():
            return await self.host.generate(body)

    async def stream(self, body: dict):
        async with self._admitted():  # held until the stream ends, as a Serve replica counts it
            async for item in self.host.stream(body):
                yield item

    async def load(self, version: dict, replace: str | None, gen: int) -> dict:
        return await self.host.load(version, replace, gen)

    async def info(self) -> dict:
        return await self.host.info()
