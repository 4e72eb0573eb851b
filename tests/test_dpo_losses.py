"""Loss functions of the preference kinds against hand computations (no Ray, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from llmray.losses import bradley_terry_loss, dpo_loss, masked_ce, sequence_logps, token_logps

# A fixed batch of sequence log-probs: policy / reference, chosen / rejected.
PC = [-10.0, -4.0, -7.5]
PR = [-12.0, -3.0, -7.5]
RC = [-11.0, -5.0, -6.0]
RR = [-11.5, -2.0, -9.0]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _t(xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_dpo_sigmoid_matches_published_formula():
    """-log sigma(beta * ((log pi(yw) - log ref(yw)) - (log pi(yl) - log ref(yl)))), Rafailov et al. eq. 7."""
    beta = 0.1
    losses, cr, rr = dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta)
    for i in range(3):
        h = (PC[i] - RC[i]) - (PR[i] - RR[i])
        assert losses[i].item() == pytest.approx(-math.log(_sig(beta * h)), rel=1e-12)
        assert cr[i].item() == pytest.approx(beta * (PC[i] - RC[i]))
        assert rr[i].item() == pytest.approx(beta * (PR[i] - RR[i]))
    # hand-computed for the first pair: h = (−10+11) − (−12+11.5) = 1.5 -> -log sigma(0.15)
    assert losses[0].item() == pytest.approx(0.620957, abs=1e-6)


def test_cdpo_label_smoothing_and_ipo():
    beta, eps = 0.5, 0.2
    losses, _, _ = dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta, "sigmoid", eps)
    ipo, _, _ = dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta, "ipo")
    for i in range(3):
        h = (PC[i] - RC[i]) - (PR[i] - RR[i])
        want = -(1 - eps) * math.log(_sig(beta * h)) - eps * math.log(_sig(-beta * h))
        assert losses[i].item() == pytest.approx(want, rel=1e-12)
        assert ipo[i].item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-12)
    with pytest.raises(ValueError):
        dpo_loss(_t(PC), _t(PR), _t(RC), _t(RR), beta, "ipo", 0.1)


def test_dpo_gradient_pushes_chosen_up_rejected_down():
    pc, pr = _t(PC).requires_grad_(), _t(PR).requires_grad_()
    losses, _, _ = dpo_loss(pc, pr, _t(RC), _t(RR), 0.1)
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()


def test_bradley_terry():
    rc, rr = _t([2.0, 0.0, -1.0]), _t([1.0, 0.0, 1.0])
    got = bradley_terry_loss(rc, rr)
    want = [-math.log(_sig(1.0)), math.log(2.0), -math.log(_sig(-2.0))]
    assert got.tolist() == pytest.approx(want, rel=1e-12)


def test_masked_ce_and_sequence_logps_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    logp = torch.log_softmax(logits, -1)
    # position t in the mask marks token t as a target, predicted from logits at t-1
    picked = [[logp[b, t - 1, ids[b, t]].item() for t in range(1, 5) if mask[b, t]] for b in range(2)]
    loss, n = masked_ce(logits, ids, mask)
    assert n.item() == 6
    assert loss.item() == pytest.approx(-sum(sum(p) for p in picked) / 6, rel=1e-9)
    seq = sequence_logps(logits, ids, mask)
    assert seq.tolist() == pytest.approx([sum(p) for p in picked], rel=1e-9)
    avg = sequence_logps(logits, ids, mask, average=True)
    assert avg.tolist() == pytest.approx([sum(p) / len(p) for p in picked], rel=1e-9)
    assert token_logps(logits, ids).shape == (2, 4)


def test_masked_ce_ignores_non_assistant_positions():
    """Changing logits that predict masked-out tokens leaves the loss unchanged."""
    torch.manual_seed(1)
    logits = torch.randn(1, 6, 5)
    ids = torch.randint(0, 5, (1, 6))
    mask = torch.tensor([[0, 0, 0, 1, 1, 0]])
    base, _ = masked_ce(logits, ids, mask)
    poked = logits.clone()
    poked[0, [0, 1, 5]] += 10 * torch.randn(3, 5)  # logits predicting tokens 1, 2 (masked) and past the end
    again, _ = masked_ce(poked, ids, mask)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)
    poked[0, 2] += 5.0 * torch.randn(5)  # predicts token 3, an assistant token
    assert masked_ce(poked, ids, mask)[0].item() != pytest.approx(base.item(), rel=1e-6)
