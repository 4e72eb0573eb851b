"""The Ray Serve application: an OpenAI-compatible ingress in front of one deployment per stage.

  HTTP --> OpenAIIngress (FastAPI)                 one replica, `ingress_num_cpus`
             auth (Bearer, compared by sha256) -> body cap (413) -> JSON -> protocol.parse_* (400)
             -> model lookup (404; ids only, never paths) -> in-flight cap (429)
             -> DeploymentHandle.generate / .stream  (model queue full -> 503)
             -> guardrail on each choice -> JSON, or SSE chunks + [DONE]
         --> ModelServer "model-<stage>"           `replicas` or `autoscaling`, `num_cpus` each
             ModelRunner (chat template, prompt caps) -> HFEngine via @serve.batch, or VLLMEngine.

`build_application(spec)` binds the graph from a serve spec (`spec.resolve_spec`);
`build_app(args)` is the application builder for `serve run serve/quickstart.yaml`
(args: pipeline file, overrides, allow_blocked, engine).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmray.serve import protocol as P
from llmray.serve.engines import ModelRunner
from llmray.serve.guardrail import build_guardrail
from llmray.serve.protocol import APIError

log = logging.getLogger("llmray.serve")
PASS_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "VLLM_CPU_KVCACHE_SPACE")


def replica_env(settings: dict, engine: str | None = None) -> dict:
    """Environment variables the replicas get (Serve's own switches come from the controller)."""
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    if engine == "vllm":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(settings["vllm"]["kv_cache_gb"]))))
    return env


@serve.deployment
class ModelServer:
    """One stage's model behind a ModelRunner; `stream` is called with `handle.options(stream=True)`."""

    async def __init__(self, model: dict, engine: str, settings: dict):
        self.model_id = model["id"]
        self.runner = ModelRunner(model["id"], model["dir"], engine, settings["max_prompt_tokens"],
                                  settings["vllm"], settings["batch_size"])
        if self.runner.engine.name == "hf":
            # Dynamic batching: @serve.batch groups requests arriving together; several groups may
            # be in flight, and the engine merges all groups waiting into its next batch.
            self._batched.set_max_batch_size(settings["batch_size"])
            self._batched.set_batch_wait_timeout_s(settings["batch_wait_ms"] / 1000)
            self.runner.engine.submit = self._batched
        await self.runner.start()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0, max_concurrent_batches=8)
    async def _batched(self, reqs):
        async for step in self.runner.engine.stream_batch(reqs):
            yield step

    async def generate(self, body: dict) -> dict:
        return await self.runner.generate(body)

    async def stream(self, body: dict):
        async for item in self.runner.stream(body):
            yield item

    async def info(self) -> dict:
        return {"id": self.model_id, "engine": self.runner.engine.name, "context": self.runner.context,
                "batching": getattr(self.runner.engine, "stats", None)}


def _openai_error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


app = FastAPI(title="llmray", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(APIError)
async def _api_error(request: Request, e: APIError):
    return _openai_error(e)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException):
    return _openai_error(APIError(e.status_code, str(e.detail), "not_found" if e.status_code == 404 else None))


@serve.deployment
@serve.ingress(app)
class OpenAIIngress:
    """Routes OpenAI requests to the stage deployments (see module doc)."""

    def __init__(self, spec: dict, handles: dict):
        self.spec = spec
        s = spec["settings"]
        self.limits = P.Limits(max_tokens=s["max_tokens"], max_n=s["max_n"])
        self.max_body, self.max_inflight = s["max_body_bytes"], s["max_concurrent_requests"]
        self.key_hash = spec.get("api_key_sha256")
        self.models = {m["id"]: m for m in spec["models"]}
        self.aliases = {m["stage"]: m["id"] for m in spec["models"]}  # `chat` works as well as `quickstart/chat`
        self.handles = handles
        self.guardrail, self.refusal = build_guardrail(spec.get("guardrail"))
        self.inflight = 0

    # ------------------------------------------------------------ request plumbing

    def _auth(self, request: Request) -> None:
        if not self.key_hash:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        got = hashlib.sha256(token.encode()).hexdigest()
        if not token or not hmac.compare_digest(got, self.key_hash):
            raise APIError(401, "Incorrect API key provided.", "invalid_api_key")

    async def _json(self, request: Request) -> dict:
        self._auth(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise APIError(413, f"the request body is {declared} bytes; the limit is {self.max_body}",
                           "request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise APIError(413, f"the request body exceeds {self.max_body} bytes", "request_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks) or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", "invalid_json") from None

    def _model(self, name: str | None) -> str:
        name = name or self.spec["default"]
        if not name:
            raise APIError(400, "'model' is required (this server has no default model)", "model_required",
                           "model")
        model_id = name if name in self.models else self.aliases.get(name)
        if model_id is None:
            raise APIError(404, f"The model '{name}' does not exist", "model_not_found", "model")
        return model_id

    @asynccontextmanager
    async def _slot(self):
        if self.inflight >= self.max_inflight:
            raise APIError(429, "too many requests in flight; retry shortly", "rate_limit_exceeded")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def _generate(self, model_id: str, body: dict) -> dict:
        try:
            result = await self.handles[model_id].generate.remote(body)
        except BackPressureError:
            raise APIError(503, f"{model_id} is overloaded; retry shortly", "overloaded") from None
        if "error" in result:
            raise APIError.from_payload(result)
        return result

    async def _open_stream(self, model_id: str, body: dict):
        """Start a streamed generation; returns (prompt_tokens, the rest of the stream)."""
        gen = self.handles[model_id].options(stream=True).stream.remote(body)
        try:
            first = await gen.__anext__()
        except BackPressureError:
            raise APIError(503, f"{model_id} is overloaded; retry shortly", "overloaded") from None
        if "error" in first:
            raise APIError.from_payload(first)
        return first["prompt_tokens"], gen

    async def _screen(self, prompt: str, text: str) -> bool:
        if self.guardrail is None:
            return True
        verdict = await asyncio.to_thread(self.guardrail.screen, prompt, text)
        if not verdict.allowed:
            log.info("guardrail refused a response: %s", verdict.reason)
        return verdict.allowed

    async def _screen_choices(self, prompt: str, choices: list[dict]) -> list[dict]:
        for c in choices:
            if not await self._screen(prompt, c["text"]):
                c["text"], c["finish_reason"] = self.refusal, "content_filter"
        return choices

    # ------------------------------------------------------------ endpoints

    @app.get("/health")
    async def health(self):
        try:
            infos = await asyncio.wait_for(asyncio.gather(*(h.info.remote() for h in self.handles.values())), 10)
        except Exception as e:  # noqa: BLE001 - any failure means not healthy
            return JSONResponse({"status": "unavailable", "error": f"{type(e).__name__}: {e}"}, status_code=503)
        return {"status": "ok", "default": self.spec["default"], "models": infos}

    @app.get("/v1/models")
    async def list_models(self, request: Request):
        self._auth(request)
        return {"object": "list", "data": [self._card(m) for m in self.spec["models"]]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request):
        self._auth(request)
        return self._card(self.models[self._model(model_id)])

    def _card(self, m: dict) -> dict:
        return {"id": m["id"], "object": "model", "created": m["created"], "owned_by": "llmray",
                "llmray": {"stage": m["stage"], "kind": m["kind"], "default": m["id"] == self.spec["default"],
                           "gate": m["gate"], "blocked": m["blocked"], "gate_reasons": m["gate_reasons"]}}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        req = P.parse_chat(await self._json(request), self.limits)
        model_id, rid = self._model(req.model), P.new_id("chatcmpl")
        body = {"messages": req.messages, "params": req.params, "request_id": rid}
        prompt = next((m["content"] for m in reversed(req.messages) if m["role"] == "user"), "")
        if req.stream:
            return await self._stream_response("chat", model_id, rid, body, prompt, req.include_usage)
        async with self._slot():
            out = await self._generate(model_id, body)
        choices = await self._screen_choices(prompt, out["choices"])
        return P.chat_response(rid, model_id, choices, out["prompt_tokens"])

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        req = P.parse_completion(await self._json(request), self.limits)
        model_id, rid = self._model(req.model), P.new_id("cmpl")
        body = {"prompts": req.prompts, "params": req.params, "request_id": rid}
        if req.stream:
            return await self._stream_response("completion", model_id, rid, body, req.prompts[0],
                                               req.include_usage)
        async with self._slot():
            out = await self._generate(model_id, body)
        n = req.params.n
        for c in out["choices"]:
            if not await self._screen(req.prompts[c["index"] // n], c["text"]):
                c["text"], c["finish_reason"] = self.refusal, "content_filter"
        return P.completion_response(rid, model_id, out["choices"], out["prompt_tokens"])

    @app.post("/v1/compare")
    async def compare(self, request: Request):
        """One prompt (chat `messages` or completion `prompt`) to several models; answers side by side."""
        body = await self._json(request)
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        names = body.pop("models", None) or list(self.models)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise APIError(400, "models must be a list of model ids", "invalid_value", "models")
        if body.get("stream"):
            raise APIError(400, "compare does not stream", "invalid_value", "stream")
        ids = [self._model(n) for n in names]
        async with self._slot():
            results = await asyncio.gather(*(self._compare_one(i, dict(body)) for i in ids))
        return {"object": "llmray.compare", "created": int(time.time()), "results": results}

    async def _compare_one(self, model_id: str, body: dict) -> dict:
        t0 = time.perf_counter()
        try:
            if "messages" in body:
                req = P.parse_chat(body, self.limits)
                payload, prompt = {"messages": req.messages}, req.messages[-1]["content"]
            else:
                req = P.parse_completion(body, self.limits)
                payload, prompt = {"prompts": req.prompts[:1]}, req.prompts[0]
            payload.update(params=req.params, request_id=P.new_id("cmp"))
            out = await self._generate(model_id, payload)
            choices = await self._screen_choices(prompt, out["choices"])
        except APIError as e:
            return {"model": model_id, "error": e.body()["error"], "status": e.status}
        return {"model": model_id, "text": choices[0]["text"], "finish_reason": choices[0]["finish_reason"],
                "choices": choices, "usage": P.usage(out["prompt_tokens"], sum(c["tokens"] for c in choices)),
                "latency_ms": round((time.perf_counter() - t0) * 1000, 1)}

    # ------------------------------------------------------------ streaming

    async def _stream_response(self, kind: str, model_id: str, rid: str, body: dict, prompt: str,
                               include_usage: bool):
        slot = self._slot()
        await slot.__aenter__()  # held until the stream ends (released in _sse's finally)
        try:
            prompt_tokens, gen = await self._open_stream(model_id, body)
        except BaseException:
            await slot.__aexit__(None, None, None)
            raise
        events = self._sse(kind, model_id, rid, body, prompt, prompt_tokens, gen, include_usage, slot)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _sse(self, kind, model_id, rid, body, prompt, prompt_tokens, gen, include_usage, slot):
        created, n = int(time.time()), body["params"].n
        choices = n * len(body.get("prompts", [None]))
        text = {i: "" for i in range(choices)}
        refused: set[int] = set()
        completion_tokens = 0

        def chunk(i, piece, finish):
            if kind == "chat":
                delta = {"content": piece} if piece else {}
                return P.sse(P.chat_chunk(rid, model_id, created, i, delta, finish))
            return P.sse(P.completion_chunk(rid, model_id, created, i, piece, finish))

        try:
            if kind == "chat":
                for i in range(choices):
                    role = {"role": "assistant", "content": ""}
                    yield P.sse(P.chat_chunk(rid, model_id, created, i, role, None))
            async for item in gen:
                for d in item["deltas"]:
                    i, piece, finish = d["index"], d["text"], d["finish_reason"]
                    completion_tokens += d["tokens"]
                    if i in refused:
                        continue
                    if piece and not await self._screen(prompt if kind == "chat" else body["prompts"][i // n],
                                                        text[i] + piece):
                        refused.add(i)
                        yield chunk(i, "", "content_filter")
                        continue
                    text[i] += piece
                    if piece or finish:
                        yield chunk(i, piece, finish)
            if include_usage:
                obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
                yield P.sse(P.usage_chunk(rid, model_id, created, obj, prompt_tokens, completion_tokens))
            yield P.SSE_DONE
        except Exception as e:  # headers are sent: report in-band, as OpenAI does
            log.exception("stream failed")
            yield P.sse(APIError(500, f"generation failed: {type(e).__name__}").body())
        finally:
            await slot.__aexit__(None, None, None)


# ---------------------------------------------------------------- building the application


def _model_options(m: dict, s: dict, engine: str) -> dict:
    env = replica_env(s, engine)
    opts = {
        "name": f"model-{m['stage']}",
        "ray_actor_options": {"num_cpus": s["num_cpus"], "num_gpus": s["num_gpus"],
                              "runtime_env": {"env_vars": env}},
        "max_ongoing_requests": s["max_ongoing_requests"], "max_queued_requests": s["max_queued_requests"],
        # vLLM on CPU takes tens of seconds to start; the default health check would be too eager.
        "health_check_timeout_s": 60, "graceful_shutdown_timeout_s": 10,
    }
    if s.get("autoscaling"):
        opts["autoscaling_config"] = dict(s["autoscaling"])
    else:
        opts["num_replicas"] = s["replicas"]
    return opts


def build_application(spec: dict):
    """The Serve application (ingress + one ModelServer per served stage) for a serve spec."""
    from llmray.serve.engines import pick_engine

    s = spec["settings"]
    engine = pick_engine(spec["engine"])
    handles = {m["id"]: ModelServer.options(**_model_options(m, s, engine)).bind(m, engine, s)
               for m in spec["models"]}
    ingress = OpenAIIngress.options(
        name="openai-ingress", num_replicas=1,
        ray_actor_options={"num_cpus": s["ingress_num_cpus"], "runtime_env": {"env_vars": replica_env(s)}},
        # Above the in-flight cap, so requests past it reach our code and get a 429 JSON answer.
        max_ongoing_requests=s["max_concurrent_requests"] + 64,
    )
    return ingress.bind(spec, handles)


def build_app(args: dict):
    """Application builder for `serve run` / `serve deploy` (see serve/quickstart.yaml).

    args: pipeline (path to pipeline.yaml), overrides (list of dotted overrides),
    allow_blocked (bool), engine (auto|vllm|hf, overrides serve.engine).
    """
    from llmray.config import load_pipeline
    from llmray.serve.spec import resolve_spec

    args = dict(args or {})
    unknown = set(args) - {"pipeline", "overrides", "allow_blocked", "engine"}
    if unknown or "pipeline" not in args:
        raise ValueError(f"build_app args: need `pipeline`; unknown keys {sorted(unknown)}")
    pipe = load_pipeline(args["pipeline"], list(args.get("overrides") or []))
    spec = resolve_spec(pipe, bool(args.get("allow_blocked", False)), args.get("engine"))
    return build_application(spec)
