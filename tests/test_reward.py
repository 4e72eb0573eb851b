"""Reward model construction: causal backbone weights carried over, scores read at the last real token."""

from __future__ import annotations

import pytest


def test_reward_model_from_causal_checkpoint(tiny_causal_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.train.reward import RewardTask, build_reward_model

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_dir))
    causal = AutoModelForCausalLM.from_pretrained(str(tiny_causal_dir))
    rm = build_reward_model(tiny_causal_dir, tok.pad_token_id).eval()
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    assert rm.config.pad_token_id == tok.pad_token_id
    # every backbone tensor is the causal model's, not a fresh initialisation
    causal_state = causal.model.state_dict()
    for name, value in rm.model.state_dict().items():
        assert torch.equal(value, causal_state[name]), name

    task = RewardTask(tiny_causal_dir, "unused", "unused", tok.pad_token_id)
    short = tok("x = 1")["input_ids"]
    long = tok("a much longer reply with many more tokens in it")["input_ids"]
    batch = task.collate({"chosen_ids": [short], "rejected_ids": [long]})
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0].sum() == len(short)
    with torch.no_grad():
        rc, rr = task.scores(rm, batch)
        alone = rm(input_ids=torch.tensor([short])).logits[0, 0]
        loss, metrics = task.loss(rm, batch)
    # right padding does not change the score: it is read at the last real token
    assert rc.item() == pytest.approx(alone.item(), abs=1e-5)
    assert loss.item() == pytest.approx(torch.nn.functional.softplus(rr - rc).item(), rel=1e-5)
    assert metrics["accuracy"].item() == float(rc.item() > rr.item())
