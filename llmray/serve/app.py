"""The Ray Serve application: an OpenAI-compatible ingress in front of the served models.

  HTTP --> OpenAIIngress (FastAPI)                 `ingress_num_cpus`
             auth (Bearer, compared by sha256) -> body cap (413) -> JSON -> protocol.parse_* (400)
             -> model lookup (404; ids only, never paths) -> in-flight cap (429)
             -> the model's host: generate / stream  (model queue full -> 503)
             -> guardrail on each choice -> JSON, or SSE chunks + [DONE]
         --> host.ModelHost: ModelRunner (chat template, prompt caps) -> HFEngine via @serve.batch, or VLLMEngine.

Where the ModelHost runs (replica.single_deployment): with one model and no served names, inside the
ingress replica (`host.InProcess`; the ingress then has the model's reservation and `replicas`), so a
request crosses no second actor; otherwise one `ModelServer` deployment per stage ("model-<stage>") and
per served name ("name-<name>"), `replicas` or `autoscaling` and `num_cpus` each, reached through a
DeploymentHandle (`host.Remote`).

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
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmray.serve import protocol as P
from llmray.serve.guardrail import build_guardrail
from llmray.serve.host import InProcess, ModelHost, Remote
from llmray.serve.protocol import APIError
from llmray.serve.replica import ingress_options, model_options, single_deployment
from llmray.serve.versions import NameRouter, PromoteError, candidate_version

log = logging.getLogger("llmray.serve")


@serve.deployment
class ModelServer(ModelHost):
    """A ModelHost as its own deployment (several models side by side, served names); the ingress reaches
    it through a DeploymentHandle (`host.Remote`); `stream` is called with `handle.options(stream=True)`."""

    async def __init__(self, model: dict, engine: str, settings: dict):
        await self.setup(model, engine, settings)


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

    async def __init__(self, spec: dict, handles: dict, local: dict | None = None):
        self.spec = spec
        s = spec["settings"]
        self.limits = P.Limits(max_tokens=s["max_tokens"], max_n=s["max_n"])
        self.max_body, self.max_inflight = s["max_body_bytes"], s["max_concurrent_requests"]
        self.key_hash = spec.get("api_key_sha256")
        self.models = {m["id"]: m for m in spec["models"]}
        self.aliases = {m["stage"]: m["id"] for m in spec["models"]}  # `chat` works as well as `quickstart/chat`
        self.handles = {model_id: Remote(h) for model_id, h in handles.items()}
        if local is not None:  # one model, no served names: it lives in this replica (no second actor hop)
            host = ModelHost()
            await host.setup(local["model"], local["engine"], s)
            self.handles[local["model"]["id"]] = InProcess(host, s["max_ongoing_requests"], s["max_queued_requests"])
        self.guardrail, self.refusal = build_guardrail(spec.get("guardrail"))
        self.inflight = 0
        self.tokenizers: dict = {}  # model folder -> tokenizer (guardrail refusals are cut to max_tokens)
        # Served names with versions (llmray.serve.promote): id -> name; requests pick a version per call.
        self.names = {n["id"]: n["name"] for n in spec.get("names", [])}
        self.aliases.update({n["name"]: n["id"] for n in spec.get("names", [])})
        self.router = NameRouter(spec, self._load_version)

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
        model_id = name if name in self.models or name in self.names else self.aliases.get(name)
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

    async def _generate_on(self, model_id: str, body: dict) -> dict:
        try:
            result = await self.handles[model_id].generate(body)
        except BackPressureError:
            raise APIError(503, f"{model_id} is overloaded; retry shortly", "overloaded") from None
        if "error" in result:
            raise APIError.from_payload(result)
        return result

    async def _open_stream_on(self, model_id: str, body: dict):
        gen = self.handles[model_id].stream(body)
        try:
            first = await gen.__anext__()
        except BackPressureError:
            raise APIError(503, f"{model_id} is overloaded; retry shortly", "overloaded") from None
        if "error" in first:
            raise APIError.from_payload(first)
        return first["prompt_tokens"], gen

    async def _generate(self, model_id: str, body: dict) -> dict:
        return await self._on_version(self._generate_on, model_id, body)

    async def _open_stream(self, model_id: str, body: dict):
        """Start a streamed generation; returns (prompt_tokens, the rest of the stream)."""
        return await self._on_version(self._open_stream_on, model_id, body)

    async def _on_version(self, call, model_id: str, body: dict):
        """`call` on the version the router picks for a served name (the stage's model otherwise). A canary
        that fails is counted against it and the request retried on the live version: clients never see it."""
        name = self.names.get(model_id)
        if name is None:
            return await call(model_id, body)
        version, canary = self.router.pick(name)
        body.update(version={"key": version["key"], "dir": version["dir"]}, live=self.router.live_keys(name),
                    gen=self.router.routes[name]["gen"], t0=time.perf_counter())
        try:
            return await call(model_id, body)
        except Exception as e:
            if not canary or (isinstance(e, APIError) and e.status < 500):
                raise
            log.warning("%s: canary %s failed (%s); answered by the live version", name, version["key"], e)
            self.router.record(version["key"], None, error=True)
            current = self.router.routes[name]["current"]
            body.update(version={"key": current["key"], "dir": current["dir"]}, t0=time.perf_counter())
            return await call(model_id, body)

    def _watch(self, body: dict, choices: list[dict]) -> None:
        """Count a named request's latency and guardrail refusals for the canary watch."""
        if "version" in body:
            self.router.record(body["version"]["key"], time.perf_counter() - body["t0"],
                               blocked=any(c["finish_reason"] == "content_filter" for c in choices))

    async def _load_version(self, name: str, version: dict, replace: str | None) -> dict:
        r = self.router.routes[name]
        return await self.handles[r["id"]].load({"key": version["key"], "dir": version["dir"]}, replace, r["gen"])

    async def _screen(self, prompt: str, text: str) -> bool:
        if self.guardrail is None:
            return True
        verdict = await asyncio.to_thread(self.guardrail.screen, prompt, text)
        if not verdict.allowed:
            log.info("guardrail refused a response: %s", verdict.reason)
        return verdict.allowed

    async def _screen_choices(self, prompt: str, choices: list[dict], model_id: str, params,
                              prompts: list[str] | None = None) -> list[dict]:
        """Screen each choice (completions: against its own prompt); a refused one gets the refusal text."""
        for c in choices:
            p = prompts[c["index"] // params.n] if prompts else prompt
            if not await self._screen(p, c["text"]):
                c["text"], c["finish_reason"] = await self._refusal(model_id, params), "content_filter"
        return choices

    async def _refusal(self, model_id: str, params) -> str:
        """The refusal under the request's own limits: cut before the first stop string, at most max_tokens
        of the model's tokens (a client asking for stop=["e"] never gets an "e")."""
        text = self.refusal
        for stop in params.stop:
            text = text.split(stop, 1)[0] if stop else text
        if params.max_tokens:
            # Counted with the model's tokenizer, loaded here once: asking the (maybe saturated) model
            # deployment would add a hop and could meet its queue limit.
            name = self.names.get(model_id)
            folder = self.router.routes[name]["current"]["dir"] if name else self.models[model_id]["dir"]
            if folder not in self.tokenizers:
                from transformers import AutoTokenizer

                self.tokenizers[folder] = await asyncio.to_thread(AutoTokenizer.from_pretrained, folder)
            tok = self.tokenizers[folder]
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) > params.max_tokens:
                text = tok.decode(ids[:params.max_tokens], skip_special_tokens=True)
        return text

    # ------------------------------------------------------------ endpoints

    @app.get("/health")
    async def health(self):
        try:
            infos = await asyncio.wait_for(asyncio.gather(*(h.info() for h in self.handles.values())), 10)
        except Exception as e:  # noqa: BLE001 - any failure means not healthy
            return JSONResponse({"status": "unavailable", "error": f"{type(e).__name__}: {e}"}, status_code=503)
        return {"status": "ok", "default": self.spec["default"], "models": infos}

    @app.get("/v1/models")
    async def list_models(self, request: Request):
        self._auth(request)
        return {"object": "list", "data": [self._card(m) for m in self.spec["models"]]
                + [self._name_card(n) for n in self.router.routes]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request):
        self._auth(request)
        model_id = self._model(model_id)
        return self._name_card(self.names[model_id]) if model_id in self.names else self._card(self.models[model_id])

    def _name_card(self, name: str) -> dict:
        d = self.router.describe(name)
        return {"id": d["id"], "object": "model", "created": int(time.time()), "owned_by": "llmray",
                "llmray": {"name": name, "stage": d["current"]["stage"], "fingerprint": d["current"]["fingerprint"],
                           "default": False, **{k: d[k] for k in ("state", "current", "canary", "canary_share",
                                                                  "previous", "last")}}}

    # ------------------------------------------------------------ promotion (llmray promote / rollback)

    @app.get("/admin/names")
    async def admin_names(self, request: Request):
        self._auth(request)
        return {"data": [self.router.describe(n) for n in self.router.routes]}

    @app.post("/admin/promote")
    async def admin_promote(self, request: Request):
        body = await self._json(request)
        name = self._route_name(body)
        try:
            version = candidate_version(self.spec["run_dir"], str(body.get("stage", "")), body.get("fingerprint"))
        except PromoteError as e:
            raise APIError(409, str(e), "conflict") from None
        canary = body.get("canary")
        if canary is not None and not (isinstance(canary, (int, float)) and 0 <= canary <= 1):
            raise APIError(400, "canary must be a number between 0 and 1", "invalid_value", "canary")
        try:
            return await self.router.promote(name, version, canary, str(body.get("who") or "unknown"))
        except PromoteError as e:
            raise APIError(409, str(e), "conflict") from None

    @app.post("/admin/rollback")
    async def admin_rollback(self, request: Request):
        body = await self._json(request)
        name = self._route_name(body)
        try:
            return await self.router.rollback(name, str(body.get("who") or "unknown"))
        except PromoteError as e:
            raise APIError(409, str(e), "conflict") from None

    def _route_name(self, body) -> str:
        name = body.get("name") if isinstance(body, dict) else None
        if name not in self.router.routes:
            raise APIError(404, f"{name!r} is not a served name ({', '.join(self.router.routes) or 'none'})",
                           "model_not_found", "name")
        return name

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
        choices = await self._screen_choices(prompt, out["choices"], model_id, req.params)
        self._watch(body, choices)
        return P.chat_response(rid, model_id, choices, out["prompt_tokens"])

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        req = P.parse_completion(await self._json(request), self.limits)
        model_id, rid = self._model(req.model), P.new_id("cmpl")
        body = {"prompts": req.prompts, "params": req.params, "request_id": rid}
        texts = [p if isinstance(p, str) else "" for p in req.prompts]  # token-id prompts: the response alone
        if req.stream:
            return await self._stream_response("completion", model_id, rid, body, texts[0], req.include_usage)
        async with self._slot():
            out = await self._generate(model_id, body)
        choices = await self._screen_choices("", out["choices"], model_id, req.params, texts)
        self._watch(body, choices)
        return P.completion_response(rid, model_id, choices, out["prompt_tokens"])

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
            choices = await self._screen_choices(prompt, out["choices"], model_id, req.params)
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
                    p = prompt if kind == "chat" else body["prompts"][i // n]
                    if piece and not await self._screen(p if isinstance(p, str) else "", text[i] + piece):
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
            body["failed"] = True
            yield P.sse(APIError(500, f"generation failed: {type(e).__name__}").body())
        finally:
            await slot.__aexit__(None, None, None)
            if "version" in body:
                self.router.record(body["version"]["key"], time.perf_counter() - body["t0"],
                                   error=body.get("failed", False), blocked=bool(refused))


# ---------------------------------------------------------------- building the application


def build_application(spec: dict):
    """The Serve application for a serve spec: the ingress holding the model (one model, no served names),
    else the ingress + one ModelServer per served stage and per served name."""
    from llmray.generate import pick_engine

    s = spec["settings"]
    engine = pick_engine(spec["engine"], "serve.engine")
    ingress = OpenAIIngress.options(**ingress_options(spec, engine))
    if single_deployment(spec):  # the ingress holds the one model itself: no second hop per request
        return ingress.bind(spec, {}, {"model": spec["models"][0], "engine": engine})
    handles = {m["id"]: ModelServer.options(**model_options(m, s, engine)).bind(m, engine, s)
               for m in spec["models"]}
    for n in spec.get("names", []):  # a served name: its own deployment, holding its versions
        m = {"id": n["id"], "stage": n["name"], "dir": n["version"]["dir"], "version": n["version"]}
        opts = model_options(m, s, engine) | {"name": f"name-{n['name']}"}
        handles[n["id"]] = ModelServer.options(**opts).bind(m, engine, s)
    return ingress.bind(spec, handles)


def build_app(args: dict):
    """Application builder for `serve run` / `serve deploy` (see serve/quickstart.yaml).

    args: pipeline (path to pipeline.yaml), overrides (list of dotted overrides),
    allow_blocked (bool), engine (auto|vllm|hf, overrides serve.engine).
    """
    from llmray.pipeline import load_pipeline
    from llmray.serve.spec import resolve_spec

    args = dict(args or {})
    unknown = set(args) - {"pipeline", "overrides", "allow_blocked", "engine"}
    if unknown or "pipeline" not in args:
        raise ValueError(f"build_app args: need `pipeline`; unknown keys {sorted(unknown)}")
    pipe = load_pipeline(args["pipeline"], list(args.get("overrides") or []))
    spec = resolve_spec(pipe, bool(args.get("allow_blocked", False)), args.get("engine"))
    return build_application(spec)
