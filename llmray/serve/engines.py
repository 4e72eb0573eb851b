"""One interface in front of every engine, and the model-side half of a request.

`ModelRunner` owns a model folder's tokenizer (with that folder's chat template; stop ids from
`llmray.chat.stop_token_ids`) and one engine. Data flow for one request:
  {"messages" | "prompts", "params": GenParams}
  --encode: llmray.chat.prompt_ids / tokenizer(prompt); prompt-length and context checks-->
  one `EngineRequest` per prompt (sampling fields the request leaves out: the folder's generation
  config, llmray.generate.decoding_defaults) --engine.stream--> lists of `Delta` (per choice index)
  --> {"prompt_tokens"} then {"deltas": [...]} items (streaming), or one {"choices": [...]} dict
  (an engine with `complete`, vLLM, answers that one whole, without per-token deltas).
Errors come back as `APIError.to_payload()` dicts (not exceptions), so they cross a Ray
DeploymentHandle unchanged and the ingress can answer with the right HTTP status.

Engines (the `Engine` protocol of llmray.generate): `hf_engine.HFEngine` (transformers, batched decode
loop) and `vllm_engine.VLLMEngine` (vLLM AsyncLLM). llmray.generate.pick_engine resolves `auto`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict

from llmray.chat import prompt_ids, stop_token_ids
from llmray.generate import Delta, EngineRequest, decoding_defaults, pick_engine
from llmray.serve.hf_engine import HFEngine
from llmray.serve.protocol import APIError, GenParams
from llmray.serve.scoring import generate_scored
from llmray.serve.vllm_engine import VLLMEngine  # vllm itself is imported when an engine starts

log = logging.getLogger(__name__)


class ModelRunner:
    """Tokenizer + chat template + caps in front of one engine (see module doc)."""

    def __init__(self, model_id: str, model_dir: str, engine: str = "auto", max_prompt_tokens: int = 1024,
                 vllm_options: dict | None = None, batch_size: int = 16):
        from transformers import AutoConfig, AutoTokenizer

        self.model_id = model_id
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        self.context = int(getattr(config, "max_position_embeddings", 2048))
        self.vocab_size = int(getattr(config, "vocab_size", 0) or len(self.tokenizer))
        self.max_prompt_tokens = max_prompt_tokens
        self.stop_ids = stop_token_ids(self.tokenizer, model_dir)
        # What a request that leaves a sampling field out gets: the folder's generation config.
        self.decoding = decoding_defaults(model_dir)
        kind = pick_engine(engine, "serve.engine")
        if kind == "vllm":
            if self.decoding.no_repeat_ngram_size:
                log.warning("%s: generation_config.json sets no_repeat_ngram_size, which vLLM does not implement; "
                            "served answers ignore it (serve.engine: hf applies it)", model_id)
            self.engine = VLLMEngine(model_dir, self.stop_ids, self.context, **(vllm_options or {}))
        else:
            self.engine = HFEngine(model_dir, self.tokenizer, self.stop_ids, batch_size)

    async def start(self, warmup: bool = True) -> None:
        """Start the engine; one short generation so the first real request is not the slow one."""
        await self.engine.start()
        if warmup:
            await self.generate({"prompts": ["warm up"], "params": GenParams(max_tokens=2, temperature=0)})

    # ------------------------------------------------------------ requests

    def encode(self, body: dict) -> list[list[int]]:
        """Token ids of each prompt: chat messages through the stage's chat template."""
        if "messages" in body:
            try:
                prompts = [prompt_ids(self.tokenizer, body["messages"])]
            except Exception as e:  # noqa: BLE001 - a template error is the client's bad request
                raise APIError(400, f"messages: cannot apply the chat template: {e}", "invalid_value",
                               "messages") from None
        else:
            prompts = [list(p) if isinstance(p, list) else list(self.tokenizer(p)["input_ids"])
                       for p in body["prompts"]]
            if any(not 0 <= t < self.vocab_size for p in prompts for t in p):
                raise APIError(400, f"prompt: token ids must lie in [0, {self.vocab_size})", "invalid_value", "prompt")
        prompts = [p or [self.tokenizer.bos_token_id or 0] for p in prompts]
        longest = max(len(p) for p in prompts)
        if longest > self.max_prompt_tokens:
            raise APIError(400, f"the prompt is {longest} tokens; this server allows at most "
                           f"{self.max_prompt_tokens}", "context_length_exceeded",
                           "messages" if "messages" in body else "prompt")
        return prompts

    def requests(self, body: dict) -> list[EngineRequest]:
        """Resolve max_tokens against the context window; one EngineRequest per prompt."""
        params: GenParams = body["params"]
        rid = body.get("request_id") or uuid.uuid4().hex
        out = []
        for i, ids in enumerate(self.encode(body)):
            room = self.context - len(ids)
            if params.max_tokens is not None and params.max_tokens > room:
                raise APIError(400, f"this model's context is {self.context} tokens; the prompt uses {len(ids)} "
                               f"and max_tokens asks for {params.max_tokens}", "context_length_exceeded",
                               "max_tokens")
            if room < 1:
                raise APIError(400, f"the prompt fills the model's {self.context}-token context",
                               "context_length_exceeded", "messages" if "messages" in body else "prompt")
            out.append(self._resolve(ids, params, room, f"{rid}-{i}"))
        return out

    def _resolve(self, ids: list[int], params: GenParams, room: int, request_id: str) -> EngineRequest:
        """The request's sampling fields where it set them, else the folder's (`self.decoding`)."""
        d = self.decoding

        def pick(value, default):
            return default if value is None else value

        default_max = (min(d.max_tokens, params.max_tokens_cap) if d.max_tokens is not None
                       else params.default_max_tokens)
        return EngineRequest(
            ids, params.max_tokens or min(default_max, room), pick(params.temperature, d.temperature),
            pick(params.top_p, d.top_p), params.n, tuple(params.stop), params.seed, request_id,
            top_k=pick(params.top_k, d.top_k), repetition_penalty=pick(params.repetition_penalty, d.repetition_penalty),
            no_repeat_ngram_size=d.no_repeat_ngram_size)

    async def stream(self, body: dict) -> AsyncIterator[dict]:
        """{"prompt_tokens": n} first (or {"error": ...} alone), then {"deltas": [...]} items."""
        try:
            reqs = self.requests(body)
        except APIError as e:
            yield e.to_payload()
            return
        yield {"prompt_tokens": sum(len(r.prompt_ids) for r in reqs)}
        n = reqs[0].n
        streams = [_offset(self.engine.stream(r), i * n) for i, r in enumerate(reqs)]
        async for deltas in _merge(streams):
            yield {"deltas": [asdict(d) for d in deltas]}

    async def generate(self, body: dict) -> dict:
        """The whole answer: {"prompt_tokens", "choices": [{"index","text","finish_reason","tokens"}]}."""
        params = body.get("params")
        if params is not None and (params.logprobs is not None or params.echo):
            return await generate_scored(self, body)  # log-probs / echo: llmray.serve.scoring
        if hasattr(self.engine, "complete"):  # vLLM: each prompt's final output only, no per-token deltas
            return await self._complete(body)
        choices: dict[int, dict] = {}
        prompt_tokens = 0
        async for item in self.stream(body):
            if "error" in item:
                return item
            if "prompt_tokens" in item:
                prompt_tokens = item["prompt_tokens"]
                continue
            for d in item["deltas"]:
                c = choices.setdefault(d["index"], {"index": d["index"], "text": "", "finish_reason": None,
                                                    "tokens": 0})
                c["text"] += d["text"]
                c["tokens"] += d["tokens"]
                c["finish_reason"] = d["finish_reason"] or c["finish_reason"]
        return {"prompt_tokens": prompt_tokens, "choices": [choices[i] for i in sorted(choices)]}


    async def _complete(self, body: dict) -> dict:
        try:
            reqs = self.requests(body)
        except APIError as e:
            return e.to_payload()
        n = reqs[0].n
        outs = await asyncio.gather(*(self.engine.complete(r) for r in reqs))
        choices = [{"index": p * n + d.index, "text": d.text, "finish_reason": d.finish_reason, "tokens": d.tokens}
                   for p, deltas in enumerate(outs) for d in deltas]
        return {"prompt_tokens": sum(len(r.prompt_ids) for r in reqs),
                "choices": sorted(choices, key=lambda c: c["index"])}


async def _offset(stream: AsyncIterator[list[Delta]], offset: int) -> AsyncIterator[list[Delta]]:
    """Shift choice indexes: prompt p of a multi-prompt completion owns indexes p*n .. p*n+n-1."""
    async for deltas in stream:
        if offset:
            deltas = [Delta(d.index + offset, d.text, d.finish_reason, d.tokens) for d in deltas]
        yield deltas


async def _merge(streams: list[AsyncIterator]) -> AsyncIterator:
    """Items of several async iterators as they come (one iterator: passed straight through)."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(s):
        try:
            async for item in s:
                await queue.put(item)
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is done:
                left -= 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
    for t in tasks:  # surface an engine failure instead of a silently short answer
        if t.done() and not t.cancelled() and t.exception():
            raise t.exception()


# Config keys that differ between two saves of the same architecture (they do not change the weights' shapes).
_NOT_ARCHITECTURE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}


def same_architecture(a: str, b: str) -> bool:
    """Whether folder b's weights can be loaded in place into an engine built from folder a: the same
    model config (shapes, vocabulary) and the same tokenizer."""
    import json
    from pathlib import Path

    def config(d):
        c = json.loads((Path(d) / "config.json").read_text())
        return {k: v for k, v in c.items() if k not in _NOT_ARCHITECTURE}

    def tokenizer(d):
        f = Path(d) / "tokenizer.json"
        return f.read_bytes() if f.exists() else None

    try:
        return config(a) == config(b) and tokenizer(a) == tokenizer(b)
    except (OSError, ValueError):
        return False
