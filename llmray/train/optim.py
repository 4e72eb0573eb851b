"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine schedule.

Parameters split into two groups: 2-D weights of linear layers decay; norms, biases and
embeddings (and so a tied output head) do not, as in GPT-3/Llama recipes. The schedule is a
LambdaLR: linear warmup 0 -> lr over `warmup_steps`, then cosine down to `min_lr_ratio * lr`
at `steps`. No Ray imports: used by the Ray loop and the bare benchmarks alike.
"""

from __future__ import annotations

import math


def param_groups(model, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, undecayed norms/biases/embeddings."""
    import torch

    embedding_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                        for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in embedding_params:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, cfg):
    """AdamW over `param_groups(model)`; `cfg` is a TrainConfig (or anything with its fields)."""
    import torch

    # fused AdamW is faster on GPU; foreach is the fast path on CPU.
    on_cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=on_cuda or None)


def lr_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based: the step about to be taken)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
