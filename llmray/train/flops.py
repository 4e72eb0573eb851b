"""Training FLOPs per token and model FLOPs utilisation (MFU), PaLM-style.

flops/token = 6 * N + 12 * L * d_attn * S, where N counts the parameters that do matmuls
(every linear layer and the output head; the input embedding lookup is free, and a tied
head is counted once, as the head), L layers, d_attn = heads * head_dim, S the sequence
length (the causal-attention term counts the full S x S score and value matmuls, as PaLM and
nanoGPT do). MFU = achieved flops/s / (devices * peak flops/s). No Ray or transformers import.
"""

from __future__ import annotations

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s per device, matched on the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
             "L40S": 362e12, "A10G": 125e12, "L4": 121e12, "B200": 2250e12, "GH200": 989e12}


def matmul_params(model) -> int:
    """Parameters taking part in matmuls: all, minus input embeddings unless tied to the head."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            total -= sum(p.numel() for p in m.parameters(recurse=False) if id(p) not in head_ids)
    return total


def flops_per_token(model, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token of a decoder-only model at `seq_len`."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * seq_len
    return 6 * matmul_params(model) + attn


def peak_flops(device) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device, or None (CPU, unknown GPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16, key=len, reverse=True):  # "GH200" before "H200"
        if key in name:
            return PEAK_BF16[key]
    return None


def mfu(tokens_per_s: float, flops_token: float, n_devices: int, peak: float | None) -> float | None:
    if not peak:
        return None
    return tokens_per_s * flops_token / (n_devices * peak)
