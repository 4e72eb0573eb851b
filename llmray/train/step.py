"""One optimizer step, with no Ray in sight: the function every training loop and benchmark calls.

    stats = train_step(model, micro_batches, optimizer, scheduler, loss_fn, compute, grad_clip, attention)

For each micro-batch: move it to the device, `loss, metrics = loss_fn(model, batch)` under
autocast (bf16 on GPU, fp32 on CPU), backward `loss / n` (gradient sync across data-parallel
ranks only on the last micro-batch, for DDP and FSDP2 alike); then clip, `optimizer.step()`,
`scheduler.step()`, `zero_grad`. Returned numbers stay tensors on the device so a loop that
logs every N steps does not force a device sync every step.

`loss_fn(model, batch) -> (scalar loss, {name: number or tensor})` is the only per-task
piece; `causal_lm_loss` is next-token prediction on `input_ids`. A task whose loss is a mean
over a varying number of tokens may report `metrics["tokens"]` (used for tokens/s).
"""

from __future__ import annotations

import contextlib

from llmray.device import attention_kernel, autocast


def causal_lm_loss(model, batch: dict):
    """Next-token cross-entropy over `input_ids` (labels are the inputs; the model shifts them)."""
    ids = batch["input_ids"]
    out = model(input_ids=ids, labels=ids, use_cache=False)
    return out.loss, {}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def _no_grad_sync(model, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch (DDP no_sync / FSDP2 switch)."""
    if last:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DistributedDataParallel
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(False)
        return _ReenableSync(model)
    return contextlib.nullcontext()


class _ReenableSync(contextlib.AbstractContextManager):
    def __init__(self, model):
        self.model = model

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)
        return False


def grad_norm_clip(model, max_norm: float):
    """Global gradient norm (a tensor), clipping to `max_norm` when > 0. Works for DTensor (FSDP2)."""
    import torch

    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def train_step(model, micro_batches, optimizer, scheduler, loss_fn, compute, grad_clip: float = 1.0,
               attention: str = "auto", weights=None) -> dict:
    """One optimizer step over `micro_batches` (a list of dict batches). Returns tensors and numbers:
    loss (mean over micro-batches), grad_norm (before clipping), lr (used for this step), tokens,
    plus the mean of every metric `loss_fn` reported. `attention`: the SDPA kernel
    (llmray.device.attention_kernel), applied to forward and backward. `weights`: each micro-batch's
    share of the step's gradient (default 1/n each); the RL trainers weight by response tokens so the
    step is the token mean over the whole minibatch whatever its micro-batch split."""
    import torch

    n = len(micro_batches)
    total_loss = torch.zeros((), device=compute.device)
    sums: dict = {}
    tokens = 0
    lr = optimizer.param_groups[0]["lr"]
    for i, batch in enumerate(micro_batches):
        batch = to_device(batch, compute.device)
        with _no_grad_sync(model, last=i == n - 1), attention_kernel(attention):
            with autocast(compute):
                loss, metrics = loss_fn(model, batch)
            (loss / n if weights is None else loss * weights[i]).backward()
        total_loss += loss.detach().float()
        tokens += int(metrics.pop("tokens", batch["input_ids"].numel() if "input_ids" in batch else 0))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + (v.detach().float() if hasattr(v, "detach") else float(v))
    grad_norm = grad_norm_clip(model, grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total_loss / n, "grad_norm": grad_norm, "lr": lr, "tokens": tokens,
            **{k: v / n for k, v in sums.items()}}
