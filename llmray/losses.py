"""Post-training losses: SFT masked cross-entropy, sequence log-probs, Bradley-Terry, DPO/IPO/cDPO.

Data flow (all tensors, batch first):
- causal LM logits [B, T, V] + input_ids [B, T] + a 0/1 loss mask [B, T] (1 = a token the
  assistant wrote, from `llmray.chat.encode_chat`) -> `token_logps` [B, T-1] (log p of each
  next token) -> `masked_ce` (SFT) or `sequence_logps` (sum over the masked tokens; DPO).
- reward model scores r_chosen, r_rejected [B] -> `bradley_terry_loss`.
- policy and reference sequence log-probs of chosen/rejected [B] -> `dpo_loss` per example,
  plus the implicit rewards beta * (log pi - log pi_ref).
Position t of the mask marks whether token t is a target, so the shift happens here once.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DpoLossType = Literal["sigmoid", "ipo"]


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for t < T-1, shape [B, T-1] (at least fp32)."""
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):  # log-probs in low precision lose the ranking
        logits = logits.float()
    targets = input_ids[:, 1:]
    # cross_entropy avoids materialising a second [B, T, V] log-softmax tensor.
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return -nll.view(targets.shape)


def masked_ce(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over target tokens where loss_mask is 1, number of those tokens)."""
    mask = loss_mask[:, 1:].to(torch.float32)
    n = mask.sum()
    loss = -(token_logps(logits, input_ids) * mask).sum() / n.clamp(min=1)
    return loss, n


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                   average: bool = False) -> torch.Tensor:
    """Per-sequence sum (or mean, `average`) of the target tokens' log-probs, shape [B]."""
    mask = loss_mask[:, 1:].to(torch.float32)
    total = (token_logps(logits, input_ids) * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair -log sigmoid(r_chosen - r_rejected): the Bradley-Terry preference likelihood."""
    return -F.logsigmoid(r_chosen - r_rejected)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: DpoLossType = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example (losses, chosen_rewards, rejected_rewards).

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
    sigmoid (Rafailov et al. 2023), with cDPO label smoothing eps:
        -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    ipo (Azar et al. 2023): (h - 1 / (2 * beta))^2
    Implicit rewards: beta * (log pi(y) - log pi_ref(y)).
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = (-(1.0 - label_smoothing) * F.logsigmoid(beta * h)
                  - label_smoothing * F.logsigmoid(-beta * h))
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only")
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def last_token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A 1-label sequence classifier's score at each right-padded row's last real token, [B] float.

    transformers pools at the rightmost token that is not `pad_token_id`; when a tokenizer has no pad
    token and pads with eos, a row that ends in eos (Mistral's `</s>`) would be read one token early.
    So the score head's per-token output is captured with a forward hook (the forward still runs through
    DDP/FSDP/PEFT wrappers, so gradients and their sync are unchanged) and read at the attention mask's
    last position, the same position the RL reward actor reads."""
    head = _score_head(model)
    captured = {}
    handle = head.register_forward_hook(lambda _m, _i, out: captured.__setitem__("logits", out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    logits = captured["logits"]  # [B, T, 1]
    last = attention_mask.sum(-1) - 1
    return logits[torch.arange(logits.shape[0], device=logits.device), last, 0].float()


def _score_head(model) -> torch.nn.Module:
    """The outermost module named `score` (a PEFT wrapper around it when LoRA trains it)."""
    names = [(name.count("."), name, m) for name, m in model.named_modules() if name.split(".")[-1] == "score"]
    if not names:
        raise ValueError(f"{type(model).__name__} has no `score` head (expected a *ForSequenceClassification)")
    return min(names, key=lambda t: (t[0], t[1]))[2]
