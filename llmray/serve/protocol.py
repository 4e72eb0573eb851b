"""The OpenAI wire format: request parsing with caps, response/chunk builders, error JSON, SSE.

Pure Python (pydantic only), so it is unit-tested without Ray. Data flow:
  request JSON --parse_chat / parse_completion (caps from `Limits`)--> a `GenParams` plus the
  messages or prompts --(model deployment)--> choices / deltas --chat_response / chat_chunk /
  completion_response / completion_chunk--> OpenAI-shaped JSON (`sse()` frames a stream chunk).
Every refusal is an `APIError` carrying the HTTP status and OpenAI's `{"error": {...}}` body.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Parameters of the OpenAI API that this server does not implement: refused (400) when set,
# rather than silently ignored, so a client never believes it got what it asked for.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "response_format",
               "best_of", "suffix", "audio", "modalities", "prediction")
# Chat answers carry no log-probs here (completions do: `logprobs` + `echo`, what lm-eval's API models use).
CHAT_UNSUPPORTED = ("logprobs", "top_logprobs", "echo")
MAX_LOGPROBS = 20  # top alternatives per token (vLLM's default max_logprobs; OpenAI allows 5)
MAX_STOP = 4  # OpenAI allows up to 4 stop sequences
MAX_PROMPTS = 16  # prompts in one /v1/completions request


class APIError(Exception):
    """An OpenAI-style error: HTTP status + `{"error": {message, type, param, code}}`."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
        413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def to_payload(self) -> dict:
        """A picklable form that crosses a DeploymentHandle (see `from_payload`)."""
        return {"error": {"status": self.status, "message": self.message, "code": self.code, "param": self.param}}

    @classmethod
    def from_payload(cls, payload: dict) -> APIError:
        e = payload["error"]
        return cls(e["status"], e["message"], e.get("code"), e.get("param"))


@dataclass(frozen=True)
class Limits:
    """Server-side caps (from the `serve:` section)."""

    max_tokens: int = 512
    max_n: int = 8
    default_completion_tokens: int = 16  # OpenAI's default for /v1/completions


@dataclass
class GenParams:
    """Sampling parameters after validation. None: the request did not set it, so the model folder's
    default applies (its generation_config.json, llmray.generate.decoding_defaults; for max_tokens,
    else `default_max_tokens`, clipped to the context)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    default_max_tokens: int = 512  # when neither the request nor the folder sets max_tokens
    max_tokens_cap: int = 512  # the server's cap, which a folder's max_new_tokens default obeys too
    logprobs: int | None = None  # completions: top alternatives per token (0: the chosen token's only)
    echo: bool = False  # completions: the prompt comes back before the completion, with its log-probs


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    # vLLM's extensions to the OpenAI parameters (what its server and clients' `extra_body` send).
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: dict | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None


class _Chat(_Sampling):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class _Completion(_Sampling):
    # Token-id prompts (one list, or a batch of lists) are what lm-eval's `local-completions` sends.
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo: score the prompt, generate nothing
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict]
    params: GenParams
    stream: bool
    include_usage: bool


@dataclass
class CompletionRequest:
    model: str | None
    prompts: list[str] | list[list[int]]  # text, or token ids
    params: GenParams
    stream: bool
    include_usage: bool


def _validate(cls, body: Any, unsupported: tuple[str, ...] = UNSUPPORTED):
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for key in unsupported:
        if body.get(key) not in (None, False, [], {}) and not (key == "response_format" and
                                                             body[key] == {"type": "text"}):
            raise APIError(400, f"'{key}' is not supported by this server", "unsupported_parameter", key)
    try:
        return cls.model_validate(body)
    except ValidationError as err:
        e = err.errors()[0]
        param = ".".join(str(p) for p in e["loc"]) or None
        raise APIError(400, f"{param}: {e['msg']}" if param else e["msg"], "invalid_value", param) from None


def _params(req: _Sampling, max_tokens: int | None, limits: Limits, default_tokens: int) -> GenParams:
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                       "max_tokens_too_large", "max_tokens")
    n = req.n or 1
    if n > limits.max_n:
        raise APIError(400, f"n is {n}; this server allows at most {limits.max_n}", "invalid_value", "n")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise APIError(400, f"stop takes at most {MAX_STOP} non-empty strings", "invalid_value", "stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(400, f"'{name}' is not supported by this server", "unsupported_parameter", name)
    return GenParams(
        max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
        top_k=None if req.top_k is None else max(0, req.top_k),  # -1 (vLLM's old "off") is 0
        repetition_penalty=req.repetition_penalty, n=n, stop=stop, seed=req.seed,
        default_max_tokens=min(default_tokens, limits.max_tokens), max_tokens_cap=limits.max_tokens,
    )


def _content(msg: _Message, i: int) -> str:
    if msg.content is None or isinstance(msg.content, str):
        return msg.content or ""
    parts = []
    for part in msg.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, "only text content parts are supported", "invalid_value", f"messages.{i}.content")
        parts.append(part["text"])
    return "".join(parts)


def _include_usage(req: _Sampling) -> bool:
    return bool(req.stream and req.stream_options and req.stream_options.get("include_usage"))


def parse_chat(body: Any, limits: Limits) -> ChatRequest:
    """Validate a /v1/chat/completions body. `developer` messages are treated as `system`."""
    req = _validate(_Chat, body, UNSUPPORTED + CHAT_UNSUPPORTED)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _content(m, i)}
                for i, m in enumerate(req.messages)]
    max_tokens = req.max_completion_tokens or req.max_tokens
    return ChatRequest(req.model, messages, _params(req, max_tokens, limits, limits.max_tokens),
                       bool(req.stream), _include_usage(req))


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    """Validate a /v1/completions body (prompt: a string, a list of strings, token ids or lists of them;
    `logprobs` / `echo` are answered by llmray.serve.scoring)."""
    req = _validate(_Completion, body)
    p = req.prompt
    prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"prompt must hold 1 to {MAX_PROMPTS} strings or token-id lists", "invalid_value",
                       "prompt")
    if any(isinstance(x, list) and not x for x in prompts):
        raise APIError(400, "a token-id prompt must not be empty", "invalid_value", "prompt")
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens 0 needs echo (it scores the prompt and generates nothing)",
                       "invalid_value", "max_tokens")
    if req.stream and (req.logprobs is not None or req.echo):
        raise APIError(400, "logprobs and echo are answered whole, not streamed", "unsupported_parameter",
                       "logprobs" if req.logprobs is not None else "echo")
    params = _params(req, req.max_tokens, limits, limits.default_completion_tokens)
    params.logprobs, params.echo = req.logprobs, bool(req.echo)
    return CompletionRequest(req.model, prompts, params, bool(req.stream), _include_usage(req))


# ---------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, choices: list[dict], prompt_tokens: int) -> dict:
    """choices: [{"index", "text", "finish_reason", "tokens"}] from a model deployment."""
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                     "finish_reason": c["finish_reason"], "logprobs": None} for c in choices],
        "usage": usage(prompt_tokens, sum(c["tokens"] for c in choices)),
    }


def completion_response(rid: str, model: str, choices: list[dict], prompt_tokens: int) -> dict:
    """choices as for chat, plus "echo" (the prompt's text, with echo) and "logprobs" (OpenAI's completions
    form, see llmray.serve.scoring). A choice the guardrail replaced (finish_reason content_filter) answers
    logprobs null: the log-probs are those of the withheld text, so they would leak it."""
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": c["index"], "text": c.get("echo", "") + c["text"], "finish_reason": c["finish_reason"],
                     "logprobs": None if c["finish_reason"] == "content_filter" else c.get("logprobs")}
                    for c in choices],
        "usage": usage(prompt_tokens, sum(c["tokens"] for c in choices)),
    }


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def completion_chunk(rid: str, model: str, created: int, index: int, text: str, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def usage_chunk(rid: str, model: str, created: int, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk when `stream_options.include_usage` is set: no choices, only usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def sse(obj: dict) -> str:
    """One server-sent event carrying a JSON chunk."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
