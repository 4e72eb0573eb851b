"""SFT: the loss mask covers exactly the assistant tokens of a multi-turn chat; batching keeps it."""

from __future__ import annotations

import pytest

CONV = [
    {"role": "system", "content": "You answer questions about Python."},
    {"role": "user", "content": "What does len do?"},
    {"role": "assistant", "content": "It returns the number of items."},
    {"role": "user", "content": "And sorted?"},
    {"role": "assistant", "content": "It returns a new sorted list."},
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    from llmray.posttrain import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


def _spans(mask):
    """(start, end) of each run of ones."""
    spans, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_mask_is_exactly_the_assistant_replies(tok):
    from llmray.chat import END_TURN
    from llmray.train.sft import encode_chat_row

    row = encode_chat_row(tok, {"messages": CONV})
    ids, mask = row["input_ids"], row["loss_mask"]
    assert row["length"] == len(ids) == len(mask)
    spans = _spans(mask)
    assert len(spans) == 2  # one run per assistant turn, nothing from system/user/role headers
    replies = [tok.decode(ids[a:b]) for a, b in spans]
    assert replies == [CONV[2]["content"] + END_TURN, CONV[4]["content"] + END_TURN]
    unmasked = tok.decode([t for t, m in zip(ids, mask) if not m])
    for turn in CONV[:2] + CONV[3:4]:
        assert turn["content"] in unmasked
    assert "<|assistant|>" in unmasked  # the role header is context, not a target


def test_padded_batch_loss_counts_only_assistant_tokens(tok):
    import torch

    from llmray.losses import masked_ce
    from llmray.posttrain import pad_batch
    from llmray.train.sft import encode_chat_row

    short = encode_chat_row(tok, {"messages": CONV[1:3]})
    long = encode_chat_row(tok, {"messages": CONV})
    batch = pad_batch([short["input_ids"], long["input_ids"]], tok.pad_token_id,
                      [short["loss_mask"], long["loss_mask"]])
    n_short, n_long = len(short["input_ids"]), len(long["input_ids"])
    assert batch["input_ids"].shape == (2, n_long)
    assert batch["attention_mask"][0].tolist() == [1] * n_short + [0] * (n_long - n_short)
    assert (batch["input_ids"][0, n_short:] == tok.pad_token_id).all()
    assert batch["loss_mask"][0, n_short:].sum() == 0  # padding is never a target
    logits = torch.randn(2, n_long, len(tok))
    _, n = masked_ce(logits, batch["input_ids"], batch["loss_mask"])
    assert n.item() == sum(short["loss_mask"]) + sum(long["loss_mask"])


def test_lora_without_peft_is_a_clear_config_error(monkeypatch, tiny_causal_dir):
    import importlib.util

    from llmray.config import ConfigError
    from llmray.pipeline import parse_pipeline

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    raw = {"name": "p", "stages": {"chat": {"kind": "sft", "from": str(tiny_causal_dir), "lora": {"r": 4}}}}
    with pytest.raises(ConfigError, match="peft"):
        parse_pipeline(raw)


def test_lora_adapters_merge_into_a_plain_model(tiny_causal_dir):
    import peft  # noqa: F401 - installed by `make setup`; fail loudly if not
    import torch
    from transformers import AutoModelForCausalLM

    from llmray.posttrain import LoraConfig, apply_lora, merge_lora

    model = apply_lora(AutoModelForCausalLM.from_pretrained(str(tiny_causal_dir)), LoraConfig(r=4), "CAUSAL_LM")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    merged = merge_lora(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert merged(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == merged.config.vocab_size
