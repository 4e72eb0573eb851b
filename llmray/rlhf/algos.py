"""PPO and GRPO math on response-aligned tensors (pure torch; no Ray, no models).

Every tensor here is shaped [batch, R]: column j is the j-th generated token of a
sample, `mask` marks real response tokens (1) against right padding (0). The
trainers gather log-probs and values into this layout; the driver turns rollouts into
rewards and advantages with these functions, and the trainers compute losses with them.

Data flow, PPO:  score + per-token KL(policy || reference) --token_rewards--> rewards
                 rewards + critic values --gae--> advantages, returns --whiten--> policy loss
GRPO:            G scores per prompt --group_advantages--> one advantage per sample,
                 broadcast to its tokens; KL to the reference is a loss term instead.
Trainer losses:  `policy_loss` / `value_loss` give one micro-batch's (loss, figures), which the
                 trainers' loss_fn hands to the shared `llmray.train.step.train_step`.
Conventions follow Ziegler et al. 2019 / TRL / OpenRLHF (k1 KL in the reward, clipped
surrogate, clipped value loss, adaptive KL coefficient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over masked entries (all of them, or along `dim`); 0 where nothing is masked in."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over masked entries."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    return var * n / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8):
    """Normalise masked entries to unit variance (and zero mean if shift_mean); padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs.

    k1 = log r (unbiased, can be negative), k2 = (log r)^2 / 2, k3 = r^-1 - 1 + log r
    (unbiased, non-negative; GRPO's choice), with log r = logp - ref_logp (Schulman's note).
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """PPO reward per token: -kl_coef * KL on every token, plus the sequence score on its last token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(score)), last] += score * (mask.sum(1) > 0)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over each response (Schulman et al. 2016).

    delta_t = r_t + gamma * V_{t+1} - V_t, with V after the last token = 0;
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = A + V), masked.
    """
    rewards, values, mask = rewards.float(), values.float(), mask.float()
    steps = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(steps)):
        nxt_mask = mask[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
        nxt_value = values[:, t + 1] * nxt_mask if t + 1 < steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt_value - values[:, t]
        last = delta + gamma * lam * nxt_mask * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4):
    """GRPO: each sample's score minus its prompt group's mean (divided by the group's std if scale).

    `scores` holds group_size consecutive samples per prompt.
    """
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    grouped = scores.view(-1, group_size).float()
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    return centred.reshape(-1)


@dataclass
class LossStats:
    loss: torch.Tensor
    clip_frac: float
    approx_kl: float


def clipped_policy_loss(logp, old_logp, advantages, mask, clip: float) -> LossStats:
    """PPO clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-e, 1+e)), r = pi/pi_old."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).float(), mask).item()
        # k3 estimate of KL(old || new): how far one epoch moved the policy
        log_r = logp - old_logp
        approx_kl = masked_mean(torch.exp(log_r) - 1 - log_r, mask).item()
    return LossStats(loss, clip_frac, approx_kl)


def clipped_value_loss(values, old_values, returns, mask, clip: float | None) -> LossStats:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, -c, c)."""
    err = (values - returns) ** 2
    if clip is None:
        return LossStats(0.5 * masked_mean(err, mask), 0.0, 0.0)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    clip_frac = masked_mean((err_clipped > err).float(), mask).item()
    return LossStats(loss, clip_frac, 0.0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position: logits [b, R, V], targets [b, R] -> [b, R]."""
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def policy_loss(logp: torch.Tensor, logits: torch.Tensor, batch: dict, clip: float, entropy_coef: float = 0.0,
                kl_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The policy trainer's loss on one micro-batch: the clipped surrogate on `advantages` against
    `old_logprobs` (absent: on-policy, this forward's own, detached; the ratio is exactly 1), minus
    entropy_coef * entropy, plus kl_coef * KL_k3(pi || ref) (GRPO; needs `ref_logprobs`).
    Returns (loss, figures) in the shape `llmray.train.step.train_step` takes from a loss_fn."""
    mask = batch["response_mask"]
    old = batch["old_logprobs"] if "old_logprobs" in batch else logp.detach()
    pg = clipped_policy_loss(logp, old, batch["advantages"], mask, clip)
    loss = pg.loss
    figures = {"policy_loss": pg.loss.item(), "clip_frac": pg.clip_frac, "approx_kl": pg.approx_kl}
    if entropy_coef:
        loss = loss - entropy_coef * masked_mean(entropy_from_logits(logits), mask)
    if kl_coef:
        kl = masked_mean(kl_per_token(logp, batch["ref_logprobs"], "k3"), mask)
        loss = loss + kl_coef * kl
        figures["kl_loss"] = kl.item()
    return loss, figures


def value_loss(values: torch.Tensor, batch: dict, clip: float | None) -> tuple[torch.Tensor, dict]:
    """The critic's loss on one micro-batch: the clipped value loss towards `returns` (a loss_fn's shape)."""
    vl = clipped_value_loss(values, batch["old_values"], batch["returns"], batch["response_mask"], clip)
    return vl.loss, {"value_loss": vl.loss.item(), "value_clip_frac": vl.clip_frac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at every position (last dim = vocab)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class KLController:
    """The KL coefficient beta. Adaptive (Ziegler et al. 2019) or fixed.

    Adaptive: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n_samples / horizon,
    so beta rises while the measured per-sequence KL is above target and falls below it.
    """

    def __init__(self, init_coef: float, target: float | None, horizon: int, adaptive: bool = True):
        self.value = float(init_coef)
        self.target = target
        self.horizon = horizon
        self.adaptive = adaptive and target is not None

    def update(self, current_kl: float, n_samples: int) -> float:
        if self.adaptive:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_samples / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
