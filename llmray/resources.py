"""The `resources:` block of a training stage, and its one translation into Ray Train's ScalingConfig.

Nothing else in the code base builds a ScalingConfig: a stage moves from a laptop to a
GPU cluster by changing this block only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmray.config import StrictModel


class Resources(StrictModel):
    """Where and how wide a training stage runs."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (one process each; one GPU each on GPU).")
    use_gpu: bool = Field(False, description="Put each worker on a GPU.")
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per worker when use_gpu (fractions colocate).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker.")
    custom: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per worker, e.g. {gpu_node: 0.01} to pin to GPU nodes."
    )
    strategy: Literal["ddp", "fsdp2"] = Field("ddp", description="Data parallel strategy.")
    max_failures: int = Field(2, ge=0, description="Ray Train restarts from the latest checkpoint before giving up.")

    @model_validator(mode="after")
    def _check(self):
        if self.strategy == "fsdp2" and not self.use_gpu and self.num_workers > 1:
            # FSDP2 on gloo works but is slow and pointless on CPU; refuse rather than surprise.
            raise ValueError("strategy fsdp2 needs use_gpu: true (use ddp on CPU)")
        return self


def scaling_config(res: Resources):
    """Resources -> ray.train.ScalingConfig."""
    from ray.train import ScalingConfig

    per_worker = {"CPU": res.cpus_per_worker, **res.custom}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    return ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker)
