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


def test_a_saved_model_keeps_the_stop_ids_of_the_folder_it_started_from(tmp_path):
    """A `from:` model's generation config may list extra stop ids (Llama 3.1's <|eom_id|>): the models
    the stages save from it keep them, next to the template's end-of-turn and the tokenizer's eos."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmray.models import save_model
    from llmray.testing import tiny_family_dir

    src = tiny_family_dir(tmp_path / "llama", "llama")
    gen = json.loads((src / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(src)
    extra = tok.convert_tokens_to_ids("<|end_header_id|>")  # stands in for an extra stop token
    (src / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [tok.eos_token_id, extra]}))
    out = save_model(AutoModelForCausalLM.from_pretrained(src), tok, tmp_path / "out", src)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert extra in eos and tok.eos_token_id in eos and tok.convert_tokens_to_ids("<|eot_id|>") in eos
    without = save_model(AutoModelForCausalLM.from_pretrained(src), tok, tmp_path / "out2")
    assert extra not in json.loads((without / "generation_config.json").read_text())["eos_token_id"]
