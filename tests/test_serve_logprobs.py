"""`logprobs` and `echo` on /v1/completions, what lm-eval's `local-completions` scores with.

Without Ray: the request checks (protocol), and the hf engine's answer (ModelRunner, the code a Serve
replica runs) against a plain transformers forward pass. With Ray Serve (slow): lm-eval run as a
client against `llmray serve` gives the in-process eval stage's accuracy and log-likelihoods.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from llmray.serve.protocol import APIError, Limits, completion_response, parse_completion

LIM = Limits(max_tokens=100, max_n=4)


def _err(body) -> APIError:
    with pytest.raises(APIError) as e:
        parse_completion(body, LIM)
    return e.value


def test_logprob_requests_parse_and_bad_ones_name_the_field():
    req = parse_completion({"prompt": [[5, 6, 7]], "max_tokens": 0, "echo": True, "logprobs": 1}, LIM)
    assert req.prompts == [[5, 6, 7]] and req.params.max_tokens == 0
    assert req.params.echo and req.params.logprobs == 1
    assert parse_completion({"prompt": [5, 6]}, LIM).prompts == [[5, 6]]  # one token-id prompt
    assert parse_completion({"prompt": "x"}, LIM).params.logprobs is None
    assert _err({"prompt": "x", "max_tokens": 0}).param == "max_tokens"  # 0 only with echo
    assert _err({"prompt": "x", "logprobs": 21}).param == "logprobs"
    assert _err({"prompt": "x", "echo": True, "stream": True}).param == "echo"
    assert _err({"prompt": [[]]}).param == "prompt"
    from llmray.serve.protocol import parse_chat

    with pytest.raises(APIError, match="'logprobs' is not supported"):
        parse_chat({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, LIM)


def test_a_screened_choice_loses_its_logprobs():
    lp = {"tokens": ["a"], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [0]}
    choices = [{"index": 0, "text": "ok", "echo": "p ", "finish_reason": "length", "tokens": 1, "logprobs": lp},
               {"index": 1, "text": "[withheld]", "echo": "p ", "finish_reason": "content_filter", "tokens": 1,
                "logprobs": lp}]
    out = completion_response("id", "m", choices, 3)["choices"]
    assert out[0]["text"] == "p ok" and out[0]["logprobs"] == lp
    assert out[1]["logprobs"] is None


def _reference(model_dir, ids: list[int]):
    """Log-prob of each token after its prefix, and the argmax token, from a plain transformers forward."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))], int(logp[-1].argmax())


def test_hf_engine_echo_logprobs_equal_a_direct_forward(tiny_causal_dir):
    from llmray.serve.engines import ModelRunner

    runner = ModelRunner("m", str(tiny_causal_dir), "hf")
    ids = runner.tokenizer("def join(a, b): return a + b", add_special_tokens=False)["input_ids"]
    want, greedy = _reference(tiny_causal_dir, ids)

    def ask(body):
        req = parse_completion(body, LIM)
        return asyncio.run(runner.generate({"prompts": req.prompts, "params": req.params}))

    # lm-eval's loglikelihood request: token ids, echo, one greedy token, top-1.
    out = ask({"prompt": [ids], "echo": True, "max_tokens": 1, "logprobs": 1, "temperature": 0})
    c = out["choices"][0]
    lp = c["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids) + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert max(abs(a - b) for a, b in zip(lp["token_logprobs"][1:len(ids)], want)) < 1e-4
    assert lp["tokens"][-1] == runner.tokenizer.decode([greedy])  # greedy: the model's argmax
    assert lp["token_logprobs"][-1] == pytest.approx(max(lp["top_logprobs"][-1].values()))
    assert all(len(t) <= 2 for t in lp["top_logprobs"][1:])  # the top-1 and the token itself
    assert lp["text_offset"][1] == len(lp["tokens"][0]) and c["echo"] == runner.tokenizer.decode(ids)
    assert out["prompt_tokens"] == len(ids)

    # max_tokens 0: the prompt scored, nothing generated; a text prompt the same as its ids.
    text = runner.tokenizer.decode(ids)
    out = [ask({"prompt": p, "echo": True, "max_tokens": 0, "logprobs": 3})["choices"][0] for p in (text, ids)]
    a, b = (c["logprobs"] for c in out)
    assert [(c["text"], c["echo"]) for c in out] == [("", text)] * 2 and a["token_logprobs"] == b["token_logprobs"]
    assert len(b["token_logprobs"]) == len(ids) and len(b["top_logprobs"][1]) in (3, 4)

    # Without echo: the completion's tokens only, sampled ones with their own log-probs.
    out = ask({"prompt": [ids], "max_tokens": 4, "logprobs": 0, "temperature": 1, "seed": 3, "n": 2})
    for c in out["choices"]:
        assert c["echo"] == "" and len(c["logprobs"]["token_logprobs"]) == c["tokens"] >= 1
        assert all(v is not None and v <= 0 for v in c["logprobs"]["token_logprobs"])
    json.dumps(out)  # crosses a DeploymentHandle and goes out as JSON


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_logprobs_agree_with_the_hf_engine(tiny_causal_dir):
    """The same request on both engines: same shapes, prompt log-probs within 1e-3 (vLLM's prompt_logprobs)."""
    pytest.importorskip("vllm")
    from llmray.serve.engines import ModelRunner

    body = {"prompt": "def join(a, b): return a + b", "echo": True, "max_tokens": 1, "logprobs": 2,
            "temperature": 0}

    async def answer(kind: str) -> dict:
        runner = ModelRunner("m", str(tiny_causal_dir), kind, vllm_options={"dtype": "float32"})
        await runner.start(warmup=False)
        try:
            req = parse_completion(body, LIM)
            return (await runner.generate({"prompts": req.prompts, "params": req.params}))["choices"][0]
        finally:
            await runner.engine.close()

    hf, vl = asyncio.run(answer("hf")), asyncio.run(answer("vllm"))
    a, b = hf["logprobs"], vl["logprobs"]
    assert a["tokens"] == b["tokens"] and a["text_offset"] == b["text_offset"] and b["token_logprobs"][0] is None
    assert max(abs(x - y) for x, y in zip(a["token_logprobs"][1:], b["token_logprobs"][1:])) < 1e-3
    assert [set(t) for t in a["top_logprobs"][1:]] == [set(t) for t in b["top_logprobs"][1:]]
