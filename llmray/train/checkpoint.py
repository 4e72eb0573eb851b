"""Resumable training state on disk: what goes into a Ray Train checkpoint folder, and back.

A checkpoint folder holds
  train_state.pt   (rank 0) full model + optimizer state dicts, scheduler state   [torch.save]
  meta.json        (rank 0) {"step", "data": stream position, "first_eval", "done"}
  rng_rank<r>.pt   (every rank) torch / cuda / python / numpy RNG states of that rank
  model/           (final checkpoint only) the HF export (safetensors) written by the task
Every rank writes into its own temporary folder and Ray Train merges them into one on storage.
Model and optimizer states are gathered as *full* (unsharded) CPU state dicts through
torch.distributed.checkpoint's state_dict API, so one format serves DDP, FSDP2 and a plain
module; every rank must call `save`/`load` (they are collectives under FSDP2). Loading uses
`torch.load(weights_only=True)`. No Ray import here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def unwrap(model):
    """The user module inside DDP (`.module`); FSDP2 and compiled modules are modified in place."""
    return getattr(model, "module", model)


def full_model_state(model) -> dict:
    """Full, CPU model state dict (a collective under FSDP2; call on every rank)."""
    if _dist_ready():
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_options(cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save(folder: Path, model, optimizer, scheduler, meta: dict, rank: int) -> None:
    """Write this rank's part of a checkpoint into `folder` (every rank calls)."""
    import numpy as np
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_sd = full_model_state(model)
    if _dist_ready():
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optim_sd = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    else:
        optim_sd = optimizer.state_dict()
    if rank == 0:
        torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict()},
                   folder / "train_state.pt")
        (folder / "meta.json").write_text(json.dumps(meta))
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # Only tensors and plain Python values, so loading needs no unpickling of arbitrary objects.
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, folder / f"rng_rank{rank}.pt")


def load_meta(folder: Path) -> dict:
    return json.loads((Path(folder) / "meta.json").read_text())


def load(folder: Path, model, optimizer, scheduler, rank: int) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG from `folder`; returns meta."""
    import numpy as np
    import torch

    folder = Path(folder)
    state = torch.load(folder / "train_state.pt", map_location="cpu", weights_only=True)
    if _dist_ready():
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(model, state["model"], options=_options())
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=_options())
    else:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_file = folder / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when the worker count changed: keep the fresh seeds
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return load_meta(folder)
