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

`CheckpointStore` keeps the checkpoint list on storage itself when training runs in the driver's
process (Ray Train's local mode keeps only the last checkpoint object, in memory): each folder is
copied to `<storage>/<run name>/checkpoint_step<N>` (local disk or an object store through a pyarrow
filesystem, meta.json last, so a folder without it is an interrupted copy and is ignored), the
oldest of its own beyond `keep` are deleted, and `latest()` gives the newest one, Ray Train's own
`checkpoint_<time>` folders of an earlier worker-group run of the same stage included.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
from pathlib import Path

from llmray.storage import copy_file


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


class CheckpointStore:
    """Checkpoint folders under `root` on a pyarrow filesystem (None: local disk); see the module docstring."""

    PREFIX = "checkpoint_step"  # ours; Ray Train names its folders checkpoint_<timestamp>

    def __init__(self, root: str, fs=None, keep: int | None = None):
        import pyarrow.fs as pafs

        self.root, self.fs, self.keep = str(root).rstrip("/"), fs or pafs.LocalFileSystem(), keep
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _read_meta(self, folder: str) -> dict | None:
        import pyarrow.fs as pafs

        path = f"{folder}/meta.json"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read())

    def checkpoints(self) -> list[tuple[int, bool, str]]:
        """(step, done, folder) of every complete checkpoint, oldest first."""
        import pyarrow.fs as pafs

        found = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                meta = self._read_meta(info.path)
                if meta is not None:
                    found.append((int(meta["step"]), bool(meta.get("done")), info.path))
        return sorted(found)

    def persist(self, folder: Path, step: int) -> str:
        """Copy a checkpoint folder written by `save` (plus anything else in it) to storage, meta.json last;
        then drop our oldest beyond `keep`. Returns the folder's path on storage."""
        import pyarrow.fs as pafs

        dest = f"{self.root}/{self.PREFIX}{step:09d}"
        if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:  # a rerun's final checkpoint again
            self.fs.delete_dir(dest)
        files = sorted((p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()),
                       key=lambda rel: rel == "meta.json")  # meta.json last: it marks the copy complete
        dst_fs = None if self.local else self.fs
        for rel in files:
            copy_file(None, f"{folder}/{rel}", dst_fs, f"{dest}/{rel}")
        ours = [c for c in self.checkpoints() if c[2].rsplit("/", 1)[-1].startswith(self.PREFIX)]
        for _, _, old in ours[:max(0, len(ours) - (self.keep or len(ours)))]:
            self.fs.delete_dir(old)
        return dest

    @contextlib.contextmanager
    def latest(self):
        """The newest complete checkpoint as a local folder (downloaded from an object store), or None."""
        import pyarrow.fs as pafs

        found = self.checkpoints()
        if not found:
            yield None
        elif self.local:
            yield Path(found[-1][2])
        else:
            src = found[-1][2]
            files = [i.path[len(src) + 1:] for i in self.fs.get_file_info(pafs.FileSelector(src, recursive=True))
                     if i.type == pafs.FileType.File]
            with tempfile.TemporaryDirectory() as d:
                for rel in files:
                    copy_file(self.fs, f"{src}/{rel}", None, f"{d}/{rel}")
                yield Path(d)

