"""PPO / GRPO math against hand computations (pure torch, no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmray.rlhf import algos
from llmray.rlhf.batch import pack, split_even


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 123.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2: 2 tokens, then padding
    adv, ret = algos.gae(rewards, values, mask, gamma=1.0, lam=0.9)
    # row 1: d2 = 1 - .7 = .3; d1 = .7 - .6 = .1, A1 = .1 + .9*.3; d0 = .6 - .5 = .1, A0 = .1 + .9*A1
    a2, a1 = 0.3, 0.1 + 0.9 * 0.3
    a0 = 0.1 + 0.9 * a1
    # row 2: padding's reward and value are ignored: d1 = 2 - .2 = 1.8; A0 = (.2 - .1) + .9 * 1.8
    expected = torch.tensor([[a0, a1, a2], [0.1 + 0.9 * 1.8, 1.8, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)


def test_gae_discount():
    adv, _ = algos.gae(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.5, lam=1.0)
    # A1 = 1; A0 = 1 + .5 * 0 - 0 + .5 * 1 * A1 = 1.5
    assert torch.allclose(adv, torch.tensor([[1.5, 1.0]]))


def test_token_rewards_put_score_on_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = algos.token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.25, -0.25 - 1.0, 0.0]]))


def test_clipped_policy_loss_clips_in_the_advantage_direction():
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    # ratio 1.5 with A > 0: clipped to 1.2 -> loss -1.2, no gradient, all tokens clipped
    logp = torch.full((1, 2), math.log(1.5), requires_grad=True)
    st = algos.clipped_policy_loss(logp, old, torch.ones(1, 2), mask, clip=0.2)
    assert st.loss.item() == pytest.approx(-1.2)
    assert st.clip_frac == 1.0
    st.loss.backward()
    assert torch.all(logp.grad == 0)
    # ratio 1.5 with A < 0: the unclipped (pessimistic) term 1.5 wins, gradient flows
    logp2 = torch.full((1, 2), math.log(1.5), requires_grad=True)
    st2 = algos.clipped_policy_loss(logp2, old, -torch.ones(1, 2), mask, clip=0.2)
    assert st2.loss.item() == pytest.approx(1.5)
    assert st2.clip_frac == 0.0
    st2.loss.backward()
    assert torch.all(logp2.grad != 0)
    # ratio 0.5 with A > 0: unclipped -0.5 is larger than clipped -0.8
    st3 = algos.clipped_policy_loss(torch.full((1, 2), math.log(0.5)), old, torch.ones(1, 2), mask, clip=0.2)
    assert st3.loss.item() == pytest.approx(-0.5)
    # approx KL(old||new) of ratio 0.5: r - 1 - log r
    assert st3.approx_kl == pytest.approx(0.5 - 1 - math.log(0.5), rel=1e-5)


def test_policy_loss_ignores_padding():
    mask = torch.tensor([[1.0, 0.0]])
    st = algos.clipped_policy_loss(torch.tensor([[0.0, 5.0]]), torch.zeros(1, 2), torch.tensor([[2.0, 100.0]]), mask, 0.2)
    assert st.loss.item() == pytest.approx(-2.0)


def test_clipped_value_loss():
    v, old, ret, mask = torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.ones(1, 1)
    st = algos.clipped_value_loss(v, old, ret, mask, clip=0.5)
    # unclipped (2-3)^2 = 1; clipped V = 1.5 -> (1.5-3)^2 = 2.25; max -> 0.5 * 2.25
    assert st.loss.item() == pytest.approx(1.125)
    assert st.clip_frac == 1.0
    assert algos.clipped_value_loss(v, old, ret, mask, clip=None).loss.item() == pytest.approx(0.5)


def test_adaptive_kl_controller():
    ctl = algos.KLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    ctl2 = algos.KLController(0.1, target=6.0, horizon=10000)
    assert ctl2.update(3.0, 1000) == pytest.approx(0.1 * (1 - 0.2 * 0.1))  # -0.5 clipped to -0.2
    ctl3 = algos.KLController(0.1, target=6.0, horizon=1000)
    assert ctl3.update(6.6, 100) == pytest.approx(0.1 * (1 + 0.1 * 0.1))  # inside the clip
    fixed = algos.KLController(0.1, target=6.0, horizon=1000, adaptive=False)
    assert fixed.update(100.0, 1000) == 0.1
    ctl.load_state_dict({"value": 0.5})
    assert ctl.state_dict() == {"value": 0.5}


def test_adaptive_kl_controller_converges_towards_target():
    ctl = algos.KLController(1.0, target=4.0, horizon=100)
    for _ in range(50):
        ctl.update(8.0 / ctl.value, 10)  # a policy whose KL is inversely proportional to beta
    assert 8.0 / ctl.value == pytest.approx(4.0, rel=0.1)


def test_group_advantages():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = algos.group_advantages(scores, 3)
    assert torch.allclose(adv[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3)
    assert torch.all(adv[3:] == 0)  # identical scores: no signal
    unscaled = algos.group_advantages(scores, 3, scale=False)
    assert torch.allclose(unscaled[:3], torch.tensor([-1.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        algos.group_advantages(scores, 4)


def test_whiten_and_kl_estimators():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = algos.masked_whiten(x, mask)
    assert algos.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert algos.masked_var(w, mask).item() == pytest.approx(1.0, rel=1e-4)
    assert w[1, 1] == 0 and w[1, 2] == 0
    lp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    k1, k2, k3 = (algos.kl_per_token(lp, ref, k) for k in ("k1", "k2", "k3"))
    assert torch.allclose(k1, lp - ref)
    assert torch.allclose(k2, 0.5 * (lp - ref) ** 2)
    assert torch.all(k3 >= 0) and k3[2] == 0
    ent = algos.entropy_from_logits(torch.zeros(2, 8))
    assert torch.allclose(ent, torch.full((2,), math.log(8)))


def test_pack_layout():
    b = pack([[1, 2, 3], [4]], [[7, 8], [9, 10, 11]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 7, 8, 0], [0, 0, 4, 9, 10, 11]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert [list(r) for r in split_even(5, 2)] == [[0, 1, 2], [3, 4]]
    assert np.concatenate([list(r) for r in split_even(3, 4)]).tolist() == [0, 1, 2]
