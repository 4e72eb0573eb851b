"""Log-probs and echo on /v1/completions: what lm-eval's API models (`local-completions`) score with.

Data flow for a request with `logprobs` and/or `echo` (answered whole, never streamed):
  prompts --ModelRunner.encode (text or token ids)--> prompt ids
  --engine.generate_ids (skipped when max_tokens is 0)--> per choice: generated ids (a stop token
    included, as vLLM counts it), text, finish reason
  --engine.score(prompt + generated ids, k): one forward per sequence (hf) or vLLM's prompt_logprobs-->
    per position: (log-prob of the token there, its top-k alternatives); position 0 has none
  --openai_logprobs--> OpenAI's completions form {tokens, token_logprobs, top_logprobs, text_offset}:
    the prompt's tokens first when `echo` (the first one's log-prob and alternatives null, as OpenAI and
    vLLM answer), then the completion's; each top_logprobs entry holds the k best and the token itself.
Log-probs are the model's own distribution (log-softmax of the logits), before temperature or top_p.
"""

from __future__ import annotations

from llmray.serve.protocol import APIError


def openai_logprobs(tokenizer, seq: list[int], scored: list, start: int) -> dict:
    """Positions `start`.. of `seq` in OpenAI's completions form; text_offset counts from the start of
    the choice's returned text."""
    tokens, lps, tops, offsets, at = [], [], [], [], 0
    for i in range(start, len(seq)):
        piece = tokenizer.decode([seq[i]])
        tokens.append(piece)
        offsets.append(at)
        at += len(piece)
        if scored[i] is None:
            lps.append(None)
            tops.append(None)
            continue
        lp, alts = scored[i]
        lps.append(lp)
        tops.append({tokenizer.decode([t]): v for t, v in alts.items()})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


async def generate_scored(runner, body: dict) -> dict:
    """ModelRunner.generate's answer, each choice with "logprobs" (None unless asked) and "echo" (the
    prompt's text when asked). Errors come back as payloads, as ModelRunner.generate's do."""
    params = body["params"]
    try:
        prompts = runner.encode(body)
        reqs = runner.requests(body) if params.max_tokens != 0 else None
    except APIError as e:
        return e.to_payload()
    choices, seqs = [], []
    for p, ids in enumerate(prompts):
        if reqs is None:
            gens = [{"index": j, "ids": [], "text": "", "finish_reason": "length"} for j in range(params.n)]
        else:
            gens = await runner.engine.generate_ids(reqs[p])
        raw = body["prompts"][p]
        echo = (raw if isinstance(raw, str) else runner.tokenizer.decode(ids)) if params.echo else ""
        for g in sorted(gens, key=lambda g: g["index"]):
            choices.append({"index": p * params.n + g["index"], "text": g["text"], "echo": echo,
                            "finish_reason": g["finish_reason"], "tokens": len(g["ids"]), "logprobs": None,
                            "_prompt": len(ids)})
            seqs.append(ids + list(g["ids"]))
    if params.logprobs is not None:
        scored = await runner.engine.score(seqs, params.logprobs)
        for c, seq, sc in zip(choices, seqs, scored):
            c["logprobs"] = openai_logprobs(runner.tokenizer, seq, sc, 0 if params.echo else c["_prompt"])
    for c in choices:
        del c["_prompt"]
    return {"prompt_tokens": sum(len(p) for p in prompts), "choices": choices}
