"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine schedule.

Parameters split into two groups: 2-D weights of linear layers decay; norms, biases and
embeddings (and so a tied output head) do not, as in GPT-3/Llama recipes. The schedule is a
LambdaLR: linear warmup 0 -> lr over `warmup_steps`, then cosine down to `min_lr_ratio * lr`
at `steps` (or, `schedule="constant"`, flat at lr). No Ray imports: used by the Ray loop, the RL
trainers (`llmray.rlhf.trainer`: `decay="all"`, a constant schedule by default) and the bare
benchmarks alike.
"""

from __future__ import annotations

import math


def param_groups(model, weight_decay: float, decay: str = "matrices") -> list[dict]:
    """Two AdamW groups: decayed matrices, undecayed norms/biases/embeddings; `decay="all"`: one
    group, every trainable parameter decayed (the RL trainers' historical default)."""
    import torch

    if decay == "all":
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    if decay != "matrices":
        raise ValueError(f"decay {decay!r}: one of matrices, all")

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


def build_optimizer(model, cfg, *, lr: float | None = None, decay: str = "matrices"):
    """AdamW over `param_groups(model, cfg.weight_decay, decay)`; `cfg` is a TrainConfig (or anything
    with its fields: lr, weight_decay, beta1, beta2, eps). `lr` overrides cfg.lr (the RL critic's)."""
    import torch

    # fused AdamW is faster on GPU; foreach is the fast path on CPU.
    on_cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, decay), lr=cfg.lr if lr is None else lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=on_cuda or None)


def lr_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float, schedule: str = "cosine") -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based: the step about to be taken)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg, *, steps: int | None = None, schedule: str = "cosine"):
    """LambdaLR of `lr_factor` over `steps` optimizer steps (default cfg.steps); `cfg` has warmup_steps
    and min_lr_ratio."""
    import torch

    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule {schedule!r}: one of cosine, constant")
    total = cfg.steps if steps is None else steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.min_lr_ratio, schedule))
