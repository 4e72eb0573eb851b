"""Reward scores are read at each row's last real token, whatever the pad id (no Ray)."""

from __future__ import annotations

import torch


def test_scores_are_read_at_the_last_real_token_even_when_it_is_the_pad_id(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from llmray.losses import last_token_scores
    from llmray.testing import tiny_family_dir

    folder = tiny_family_dir(tmp_path / "qwen2", "qwen2")  # no pad token: padding falls back to eos
    pad = 5
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, pad_token_id=pad).eval()
    ids = torch.tensor([[10, 11, 12, pad], [10, 11, pad, pad]])  # row 0 ends in a real `pad` (eos) token
    att = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    got = last_token_scores(model, ids, att)
    alone = []
    for row in range(2):
        n = int(att[row].sum())
        out: dict = {}
        hook = model.score.register_forward_hook(lambda _m, _i, o, out=out: out.__setitem__("o", o))
        with torch.no_grad():
            model(input_ids=ids[row: row + 1, :n])
        hook.remove()
        alone.append(float(out["o"][0, -1, 0]))
    assert torch.allclose(got.detach(), torch.tensor(alone), atol=1e-5)
    # transformers' own pooling reads row 0 one token early (the rightmost non-pad id): the case fixed here.
    with torch.no_grad():
        pooled = model(input_ids=ids[:1], attention_mask=att[:1]).logits[0, 0]
    assert abs(float(pooled) - alone[0]) > 1e-4
    # Gradients flow through the captured head output.
    last_token_scores(model, ids, att).sum().backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0
