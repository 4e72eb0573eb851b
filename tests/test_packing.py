"""SFT sequence packing (`llmray.posttrain.pack_batch`, `SftTask` with `packing: true`), no Ray.

A tiny random Llama (sdpa attention, fp32, CPU) sees the same chat-like rows padded and packed:
per-sequence losses, the micro-batch loss and the gradients must agree, position ids must restart
at every sequence, and no token of one sequence may see another one in the same packed row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmray.losses import token_logps
from llmray.posttrain import pack_batch, pad_batch

LENGTHS = [37, 5, 120, 64, 9, 200, 33]
MAX_LEN = 256


def _rows(vocab: int, lengths=LENGTHS, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random token rows; the loss mask marks a trailing 'assistant' span (never token 0)."""
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for n in lengths:
        ids.append(rng.integers(3, vocab, size=n))
        m = np.zeros(n, dtype=np.int64)
        m[max(1, n // 3):] = 1
        masks.append(m)
    return ids, masks


@pytest.fixture(scope="module")
def task(tiny_causal_dir):
    from llmray.train.sft import SftTask

    return SftTask(tiny_causal_dir, "unused", "unused", pad_id=0, packing=True, max_seq_len=MAX_LEN)


@pytest.fixture(scope="module")
def model(task):
    torch.manual_seed(0)
    return task.build_model().eval()


def _per_sequence(logits, batch, n_seqs: int) -> torch.Tensor:
    """Sum of the masked CE of every original sequence, from a padded or a packed batch."""
    nll = -token_logps(logits, batch["input_ids"]) * batch["loss_mask"][:, 1:]
    if "sequence_index" not in batch:  # padded: one sequence per row
        return nll.sum(-1)
    owner = batch["sequence_index"][:, 1:]  # the sequence each target token belongs to
    keep = owner >= 0
    return torch.zeros(n_seqs, dtype=nll.dtype).index_add_(0, owner[keep], nll[keep])


def test_pack_batch_layout():
    ids, masks = _rows(1000)
    b = pack_batch(ids, 0, masks, MAX_LEN)
    index, pos = b["sequence_index"], b["position_ids"]
    # longest first into the emptier of 2 rows: 200+33 | 120+64+37+9+5, as wide as the fuller one
    assert b["input_ids"].shape == (2, 235)
    assert [sorted(set(row.tolist()) - {-1}) for row in index] == [[5, 6], [0, 1, 2, 3, 4]]
    assert sorted(set(index.flatten().tolist()) - {-1}) == list(range(len(ids)))
    for i, (seq, m) in enumerate(zip(ids, masks)):
        where = (index == i).nonzero()
        r, cols = where[0, 0].item(), where[:, 1]
        assert (where[:, 0] == r).all() and (cols == torch.arange(cols[0], cols[0] + len(seq))).all()
        assert b["input_ids"][r, cols].tolist() == seq.tolist()
        assert pos[r, cols].tolist() == list(range(len(seq)))  # positions restart per sequence
        assert b["loss_mask"][r, cols[0]] == 0  # a sequence's first token is never a target
        assert b["loss_mask"][r, cols[1:]].tolist() == m[1:].tolist()
    pad = index == -1
    assert (b["input_ids"][pad] == 0).all() and (b["loss_mask"][pad] == 0).all()
    assert int((~pad).sum()) == sum(LENGTHS)
    assert pos[0, 233:].tolist() == [0, 1]  # the padding tail is a segment of its own
    with pytest.raises(ValueError, match="exceeds max_len 100"):
        pack_batch(ids, 0, masks, 100)


def test_pack_rows_balances_and_never_exceeds_padding():
    from llmray.posttrain import pack_rows

    # first-fit into 512-token rows would give 382+115+... | 300+150+... and a mostly empty third
    # row; balancing 3 rows keeps the batch 390 wide
    lengths = [382, 300, 150, 115, 100, 60, 30, 15]
    rows = pack_rows(lengths, 512)
    fills = [sum(lengths[i] for i in r) for r in rows]
    assert sorted(i for r in rows for i in r) == list(range(8)) and len(rows) == 3 and max(fills) == 390
    rng = np.random.default_rng(0)
    for _ in range(200):
        lens = [int(x) for x in rng.integers(1, 129, size=int(rng.integers(1, 12)))]
        rows = pack_rows(lens, 128)
        fills = [sum(lens[i] for i in r) for r in rows]
        assert sorted(i for r in rows for i in r) == list(range(len(lens))) and max(fills) <= 128
        assert len(rows) * max(fills) <= len(lens) * max(lens)  # never more positions than padding


def test_packed_losses_and_grads_equal_padded(task, model):
    ids, masks = _rows(model.config.vocab_size)
    np_batch = {"input_ids": np.array(ids, dtype=object), "loss_mask": np.array(masks, dtype=object)}
    packed = task.collate(np_batch)
    padded = pad_batch(ids, 0, masks)
    assert packed["input_ids"].numel() == 470 < padded["input_ids"].numel()  # 2 x 235 vs 7 x 200
    results = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        model.zero_grad(set_to_none=True)
        loss, metrics = task.loss(model, batch)
        loss.backward()
        with torch.no_grad():
            fwd = {k: v for k, v in batch.items() if k != "loss_mask" and k != "sequence_index"}
            logits = model(**fwd, use_cache=False).logits
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (loss.detach(), metrics, _per_sequence(logits, batch, len(ids)), grads)
    (l_pad, m_pad, s_pad, g_pad), (l_pack, m_pack, s_pack, g_pack) = results["padded"], results["packed"]
    assert m_pad["tokens"] == m_pack["tokens"] == sum(LENGTHS)
    assert m_pad["assistant_tokens"] == m_pack["assistant_tokens"] == sum(int(m[1:].sum()) for m in masks)
    assert s_pad.shape == (len(ids),) and (s_pad > 0).all()
    torch.testing.assert_close(s_pack, s_pad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(l_pack, l_pad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_pack, g_pad, atol=1e-5, rtol=1e-4)


def test_no_attention_across_sequence_boundary(model):
    vocab = model.config.vocab_size
    (a, b), masks = _rows(vocab, [50, 30], seed=1)
    a2 = np.random.default_rng(2).integers(3, vocab, size=len(a))  # another sequence A, same length
    outs, causal_only = [], []
    for first in (a, a2):
        batch = pack_batch([first, b], 0, masks, MAX_LEN)
        assert batch["input_ids"].shape == (1, 80)  # A (longer) first, then B, one row
        assert batch["position_ids"][0, 50:].tolist() == list(range(30))
        with torch.no_grad():
            outs.append(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                              use_cache=False).logits[0])
            causal_only.append(model(input_ids=batch["input_ids"], use_cache=False).logits[0])
    assert not torch.allclose(outs[0][:50], outs[1][:50])  # A's logits did change
    torch.testing.assert_close(outs[0][50:], outs[1][50:], atol=1e-5, rtol=0)  # B's did not
    # and B alone gives the same logits as B packed behind A
    with torch.no_grad():
        alone = model(input_ids=torch.as_tensor(b)[None], use_cache=False).logits[0]
    torch.testing.assert_close(outs[0][50:], alone, atol=1e-5, rtol=1e-5)
    # control: one plain causal row (positions 0..79, no segments) lets B see A, so the check can fail
    assert not torch.allclose(causal_only[0][50:], causal_only[1][50:], atol=1e-5)


def test_packing_flag_on_the_sft_config(tiny_causal_dir):
    from llmray.stages.sft import Config

    assert Config(**{"from": str(tiny_causal_dir)}).packing is False
    assert Config(**{"from": str(tiny_causal_dir), "packing": True}).packing is True
    assert "max_seq_len" in Config.model_fields["packing"].description


@pytest.mark.slow
def test_packed_sft_stage_on_ddp_matches_padded(tmp_path, ray_local, tiny_causal_dir):
    """The sft stage with `packing: true` on 2 DDP workers (the shared loop, unchanged) next to the padded
    stage on 1: same init model and held-out batches, so the held-out loss before training agrees."""
    import json

    from llmray.pipeline import parse_pipeline
    from llmray.runner import run_pipeline

    train = {"steps": 2, "micro_batch_size": 4, "warmup_steps": 1, "log_every": 1, "eval_every": 2,
             "eval_batches": 2, "checkpoint_every": 2}
    common = {"kind": "sft", "from": str(tiny_causal_dir), "train": train, "samples": 0, "max_records": 32}
    raw = {"name": "pack", "workdir": str(tmp_path), "stages": {
        "padded": common,
        "packed": {**common, "packing": True, "resources": {"num_workers": 2}}}}
    assert run_pipeline(parse_pipeline(raw)) == {"padded": "completed", "packed": "completed"}
    pad, pack = (json.loads((tmp_path / "pack" / s / "manifest.json").read_text())["metrics"]
                 for s in ("padded", "packed"))
    assert pack["heldout_tokens"] == pad["heldout_tokens"] > 0
    assert pack["heldout_loss_before"] == pytest.approx(pad["heldout_loss_before"], abs=1e-4)
    records = [json.loads(x) for x in (tmp_path / "pack" / "packed" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert len(steps) == 2 and all(r["tokens_per_s"] > 0 and r["assistant_tokens"] > 0 for r in steps)
