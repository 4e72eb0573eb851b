"""OpenAI request parsing, caps and error shapes (pure Python: no Ray, no model)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from llmray.serve.protocol import (
    APIError,
    Limits,
    chat_chunk,
    chat_response,
    parse_chat,
    parse_completion,
    sse,
)
from llmray.serve_config import ServeConfig

LIM = Limits(max_tokens=100, max_n=4)


def _err(fn, body) -> APIError:
    with pytest.raises(APIError) as e:
        fn(body, LIM)
    return e.value


def test_chat_defaults_and_roles():
    req = parse_chat({"model": "p/chat", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
    ]}, LIM)
    assert req.model == "p/chat"
    assert req.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    p = req.params
    # Unset sampling fields stay None: the served folder's generation config fills them (ModelRunner).
    assert (p.max_tokens, p.temperature, p.top_p, p.n, p.stop, p.seed) == (None, None, None, 1, [], None)
    assert (p.top_k, p.repetition_penalty) == (None, None)
    assert p.default_max_tokens == 100  # chat: as many as the cap allows
    assert not req.stream and not req.include_usage


def test_chat_sampling_params_pass_through():
    req = parse_chat({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7,
                      "temperature": 0, "top_p": 0.5, "n": 3, "stop": "\n", "seed": 11, "stream": True,
                      "stream_options": {"include_usage": True}}, LIM)
    p = req.params
    assert (p.max_tokens, p.temperature, p.top_p, p.n, p.stop, p.seed) == (7, 0, 0.5, 3, ["\n"], 11)
    assert req.stream and req.include_usage


@pytest.mark.parametrize("body, param, code", [
    ({"messages": []}, "messages", "invalid_value"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 101}, "max_tokens", "max_tokens_too_large"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 5}, "n", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools",
     "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5}, "presence_penalty",
     "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content", "invalid_value"),
])
def test_chat_bad_requests_are_400_with_param(body, param, code):
    e = _err(parse_chat, body)
    assert e.status == 400
    assert e.param == param and e.code == code
    assert e.body()["error"]["type"] == "invalid_request_error"


def test_chat_tolerates_unknown_and_neutral_fields():
    req = parse_chat({"messages": [{"role": "user", "content": "x"}], "user": "u1", "logprobs": False,
                      "response_format": {"type": "text"}, "presence_penalty": 0}, LIM)
    assert req.messages[0]["content"] == "x"


def test_body_must_be_an_object():
    assert _err(parse_chat, ["not", "an", "object"]).status == 400


def test_completion_prompts_and_default_length():
    req = parse_completion({"prompt": ["a", "b"], "n": 2}, LIM)
    assert req.prompts == ["a", "b"] and req.params.n == 2
    assert req.params.max_tokens is None and req.params.default_max_tokens == 16  # OpenAI's default
    assert parse_completion({"prompt": "a"}, LIM).prompts == ["a"]
    assert _err(parse_completion, {"prompt": []}).param == "prompt"
    assert _err(parse_completion, {"prompt": ["x"] * 17}).param == "prompt"
    assert _err(parse_completion, {"prompt": "x", "suffix": "y"}).code == "unsupported_parameter"


def test_error_payload_round_trip_and_types():
    e = APIError(404, "The model 'x' does not exist", "model_not_found", "model")
    back = APIError.from_payload(json.loads(json.dumps(e.to_payload())))
    assert (back.status, back.message, back.code, back.param) == (404, e.message, "model_not_found", "model")
    assert APIError(429, "slow down").body()["error"]["type"] == "rate_limit_error"
    assert APIError(503, "busy").body()["error"]["type"] == "server_error"


def test_response_shapes():
    r = chat_response("id1", "p/m", [{"index": 0, "text": "hey", "finish_reason": "stop", "tokens": 2}], 5)
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["message"] == {"role": "assistant", "content": "hey"}
    assert r["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    frame = sse(chat_chunk("id1", "p/m", 1, 0, {"content": "h"}, None))
    assert frame.startswith("data: {") and frame.endswith("\n\n")
    assert json.loads(frame[6:])["choices"][0]["delta"] == {"content": "h"}


def test_serve_config_validation():
    assert ServeConfig(models=["a", "b"]).host == "127.0.0.1"  # loopback unless asked
    with pytest.raises(ValidationError, match="twice"):
        ServeConfig(models=["a", "a"])
    with pytest.raises(ValidationError, match="batch_size"):
        ServeConfig(models=["a"], batch_size=100, max_ongoing_requests=10)
    with pytest.raises(ValidationError):
        ServeConfig(models=["a"], api_key_env="not a name")
    with pytest.raises(ValidationError):
        ServeConfig(models=["a"], route_prefix="no-slash")
    with pytest.raises(ValidationError):
        ServeConfig(models=["a"], autoscaling={"min_replicas": 3, "max_replicas": 1})
    fields = ServeConfig.model_fields
    assert all(f.description for f in fields.values())
