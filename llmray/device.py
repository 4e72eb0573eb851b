"""The one place that chooses a device and precision (nanochat's compute_init).

Inside a Ray Train worker the device comes from Ray Train; outside (benchmarks, tests,
GPU checks without Ray) from what torch sees. Nothing else calls `.cuda()`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compute:
    device: object  # torch.device
    dtype: object  # autocast dtype, or None for fp32
    is_cuda: bool


def compute_init(in_ray_train: bool | None = None) -> Compute:
    import torch

    device = None
    if in_ray_train is not False:
        try:
            from ray import train

            if train.get_context().get_world_size() >= 1:
                import ray.train.torch

                device = ray.train.torch.get_device()
        except Exception:  # not inside a Ray Train worker
            device = None
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    is_cuda = device.type == "cuda"
    if is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Compute(device=device, dtype=torch.bfloat16 if is_cuda else None, is_cuda=is_cuda)


ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def attention_kernel(backend: str):
    """The SDPA kernel a training step uses: `auto` lets torch pick (FlashAttention-2 for bf16 on
    recent GPUs); `cudnn` (cuDNN's fused attention, fastest on Hopper in our reading), `flash`,
    `efficient` or `math` force one. A forced kernel the device lacks (cudnn on a CPU) raises
    torch's "No viable backend" error at the first step rather than running something else."""
    import contextlib

    if backend == "auto":
        return contextlib.nullcontext()
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {backend!r}: one of {ATTENTION_BACKENDS}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                         "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]])


def autocast(compute: Compute):
    """bf16 autocast on GPU, a no-op context on CPU (fp32)."""
    import contextlib

    import torch

    if compute.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=compute.device.type, dtype=compute.dtype)
