"""What a training kind plugs into the shared loop: a small task object (see `llmray.train`).

`TrainTask` is the contract; `BaseTask` gives defaults for all but `datasets`, `build_model`
and (unless next-token loss on `input_ids` is wanted) `loss`. A task is built on the driver
from the stage config and input paths, then pickled to every Ray Train worker, so it holds
only plain data (configs, paths), never datasets, models or open files.

Driver side:  datasets()            -> {"train": Dataset, "val": Dataset, ...}
Worker side:  build_model()         -> nn.Module on CPU, fp32 (loop moves, wraps, compiles it)
              collate(np_batch)     -> dict of tensors (default: `input_ids` -> LongTensor)
              train_stream(epochs)  -> resumable micro-batch stream (default: BatchStream on "train")
              loss(model, batch)    -> (scalar loss, {metric: value})
              evaluate(model, val_sets, compute, rank, world) -> {metric: float}   (collective)
              save(model, out_dir)  -> HF folder (rank 0; model is the plain, full module)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from llmray.train.data import BatchStream, token_collate
from llmray.train.step import causal_lm_loss, to_device


@runtime_checkable
class TrainTask(Protocol):
    def datasets(self) -> dict[str, Any]: ...

    def build_model(self) -> Any: ...

    def collate(self, batch: dict) -> dict: ...

    def train_stream(self, epochs: dict) -> Any: ...

    def loss(self, model, batch: dict) -> tuple[Any, dict]: ...

    def evaluate(self, model, val_sets: dict[str, list[dict]], compute, rank: int, world: int) -> dict: ...

    def save(self, model, out_dir: Path) -> None: ...


class BaseTask:
    """Defaults: next-token loss, "train" stream, mean loss + perplexity on every "val*" set."""

    tokenizer_dir: Path  # subclasses set it: the tokenizer `save` writes next to the model

    def datasets(self) -> dict[str, Any]:
        raise NotImplementedError

    def build_model(self):
        raise NotImplementedError

    def collate(self, batch: dict) -> dict:
        return token_collate(batch)

    def train_stream(self, epochs: dict):
        """`epochs[name]()` opens one epoch of numpy micro-batches of the train dataset `name`."""
        return BatchStream(epochs["train"], self.collate)

    def loss(self, model, batch: dict):
        return causal_lm_loss(model, batch)

    def evaluate(self, model, val_sets: dict[str, list[dict]], compute, rank: int, world: int) -> dict:
        """Mean loss (and perplexity) per validation set, batches split round-robin across ranks.

        Every rank runs the same number of forwards (padding with a zero-weight repeat), which
        FSDP2 needs: its forward all-gathers parameters."""
        import torch

        from llmray.device import autocast

        out = {}
        for name, batches in val_sets.items():
            if not batches:
                continue
            sums = torch.zeros(2, device=compute.device, dtype=torch.float64)
            for j in range(math.ceil(len(batches) / world)):
                idx = j * world + rank
                weight = 1.0 if idx < len(batches) else 0.0
                batch = to_device(batches[idx if weight else 0], compute.device)
                with torch.no_grad(), autocast(compute):
                    loss, _ = self.loss(model, batch)
                weight *= batch["input_ids"].shape[0]  # rows: a short last held-out batch counts for less
                sums += torch.stack([loss.detach().double() * weight, torch.tensor(weight, device=sums.device,
                                                                                   dtype=torch.float64)])
            sums = all_reduce_sum(sums)
            mean = (sums[0] / sums[1]).item()
            out[f"{name}_loss"] = mean
            out[f"{name}_ppl"] = math.exp(min(mean, 50.0))
        return out

    def save(self, model, out_dir: Path) -> None:
        from transformers import AutoTokenizer

        from llmray.models import save_model

        save_model(model, AutoTokenizer.from_pretrained(str(self.tokenizer_dir)), out_dir)


def all_reduce_sum(t):
    """Sum a tensor over data-parallel ranks (identity outside torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
