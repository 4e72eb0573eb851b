"""Where stages run, one family of blocks: a training stage's `resources:` (`Resources` -> Ray Train's
ScalingConfig), what one Ray actor or task reserves (`ActorResources` -> `.options(...)`: RL roles,
eval tasks; `TaskResources`: a task that may run in the driver's process instead, the constitution's
feedback pass; `ReplicaResources`: each serving replica, flat in the `serve:` section), and a data
stage's `placement:` (-> the node labels every Ray Data task and actor of the stage requires).

Nothing else in the code base builds a ScalingConfig or sets a Ray Data label selector: a pipeline
moves from a laptop to a GPU cluster by changing these blocks only. On a cluster whose nodes carry
labels (`ray start --labels node-group=cpu`, the launcher's `labels:`, KubeRay's `rayStartParams`),
`placement: {labels: {node-group: cpu}}` keeps curation and tokenization on CPU nodes, and
`resources: {use_gpu: true, custom: {gpu_node: 0.01}}` keeps trainers on the nodes advertising `gpu_node`.
Placement never enters a stage's fingerprint (its fields are EXECUTION_ONLY, see llmray.fingerprint): where work runs does not
change what it produces.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import Field, model_validator

from llmray.config import EXECUTION_ONLY, StrictModel
from llmray.rayutil import local_cpu_ray

# An `auto | true | false` switch of where something runs (in the driver's process, sharing a process):
# auto decides from the Ray this process is on; never in a fingerprint (the math is the same).
AutoSwitch = bool | Literal["auto"]


def auto_switch(description: str):
    """The pydantic field of an `AutoSwitch`, default auto."""
    return Field("auto", json_schema_extra=EXECUTION_ONLY, description=description)


class Resources(StrictModel):
    """Where and how wide a training stage runs."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (one process each; one GPU each on GPU).")
    use_gpu: bool = Field(False, description="Put each worker on a GPU.")
    gpus_per_worker: float = Field(1.0, json_schema_extra=EXECUTION_ONLY, gt=0, description="GPUs per worker when use_gpu (fractions colocate).")
    cpus_per_worker: float = Field(1.0, json_schema_extra=EXECUTION_ONLY, gt=0, description="CPUs reserved per worker.")
    custom: dict[str, float] = Field(
        default_factory=dict, json_schema_extra=EXECUTION_ONLY, description="Custom Ray resources per worker, e.g. {gpu_node: 0.01} to pin to GPU nodes."
    )
    strategy: Literal["ddp", "fsdp2"] = Field("ddp", description="Data parallel strategy.")
    max_failures: int = Field(2, json_schema_extra=EXECUTION_ONLY, ge=0, description="Ray Train restarts from the latest checkpoint before giving up.")
    in_process: AutoSwitch = auto_switch(
        description="Train in the driver's own process (Ray Train's local mode) instead of a Ray Train worker "
                    "group: no controller or worker process to start (~15-30 s a stage on a small machine), but no "
                    "process isolation, and restarts (max_failures) only after a Python exception, not a killed "
                    "process. auto: in-process for one CPU worker with no custom resources on a local Ray this "
                    "process started (`llmray run` on a laptop); false: always the worker group; true: in-process, "
                    "an error where that cannot hold.")

    @model_validator(mode="after")
    def _check(self):
        if self.strategy == "fsdp2" and not self.use_gpu and self.num_workers > 1:
            # FSDP2 on gloo works but is slow and pointless on CPU; refuse rather than surprise.
            raise ValueError("strategy fsdp2 needs use_gpu: true (use ddp on CPU)")
        if self.in_process is True and (self.num_workers > 1 or self.use_gpu or self.custom):
            raise ValueError("in_process: true trains in the driver's process, so it needs num_workers: 1, "
                             "use_gpu: false and no custom resources (set in_process: auto or false)")
        return self


class ActorResources(StrictModel):
    """What one Ray actor or task reserves (an RL role's actor, an eval or feedback task). Fractions let
    several share a CPU or GPU (colocation)."""

    num_cpus: float = Field(0.25, json_schema_extra=EXECUTION_ONLY, gt=0, description="CPUs reserved (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved (fractions colocate roles on one GPU).")
    custom: dict[str, float] = Field(default_factory=dict, json_schema_extra=EXECUTION_ONLY, description="Custom Ray resources, e.g. {gpu_node: 0.01}.")
    threads: int | None = Field(None, json_schema_extra=EXECUTION_ONLY, ge=1, description="torch threads inside the actor; default: num_cpus "
                                                        "rounded, at least 1.")

    def ray_options(self) -> dict:
        """The reservation as Ray `.options(...)` keywords."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "resources": dict(self.custom) or None}

    def torch_threads(self) -> int:
        """torch threads inside: `threads`, else the reserved CPUs rounded (at least 1)."""
        return self.threads or max(1, round(self.num_cpus))


class TaskResources(ActorResources):
    """What one Ray task reserves that may instead run in the driver's process (the constitution's
    feedback pass): `ActorResources` plus the `in_process` switch of the training and RL kinds."""

    in_process: AutoSwitch = auto_switch(
        description="Run the task in the driver's own process instead of a Ray task: no worker process to start "
                    "and import torch and transformers in (5-10 s a stage on a laptop), but no process "
                    "isolation. auto: in-process on a one-node, GPU-less Ray this process started (`llmray run` "
                    "on a laptop) when the task reserves no GPUs or custom resources and generates with "
                    "transformers (a vLLM engine keeps its Ray task); false: always a Ray task; true: "
                    "in-process, an error where that cannot hold.")

    @model_validator(mode="after")
    def _check(self):
        if self.in_process is True and (self.num_gpus or self.custom):
            raise ValueError("in_process: true runs the task in the driver's process, so it needs num_gpus: 0 and "
                             "no custom resources (set in_process: auto or false)")
        return self


def task_in_process(res: TaskResources, engine: str) -> bool:
    """Whether a `TaskResources` task runs in the driver's process (`TaskResources.in_process`) with the
    resolved generation `engine` ("hf" | "vllm"). `true` where that cannot hold is an error naming the field."""
    if res.in_process is False:
        return False
    if res.in_process is True and engine != "hf":
        raise ValueError("resources.in_process: true needs the transformers engine (engine.engine: hf); a vLLM "
                         "engine runs in its own Ray task (set in_process: auto or false)")
    return local_ray_for(res.in_process) and engine == "hf" and not res.num_gpus and not res.custom


class ReplicaResources(ActorResources):
    """What each serving replica (one model deployment's actor) reserves. Its fields sit flat in the
    `serve:` section (llmray.serve_config.ServeConfig extends this class): `serve: {num_cpus: 0.25}`."""

    num_cpus: float = Field(0.5, json_schema_extra=EXECUTION_ONLY, ge=0,
                            description="CPUs reserved per replica (fractional: replicas mostly wait).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions allowed).")
    threads: int | None = Field(None, json_schema_extra=EXECUTION_ONLY, ge=1,
                                description="torch threads in each transformers-engine replica; default: "
                                            "torch's own choice.")

    def ray_options(self) -> dict:
        """As Ray Serve's `ray_actor_options` take it (no `resources` key when there are none)."""
        return {k: v for k, v in super().ray_options().items() if v is not None}


def in_process(res: Resources) -> bool:
    """Whether `res` trains in the driver's process (`Resources.in_process`; auto: one CPU worker, no custom
    resources, on a one-node, GPU-less Ray this process started). `true` where that Ray is not there is an
    error. A GPU machine keeps the worker group: there Ray Train picks each worker's device."""
    if res.in_process is False:
        return False
    return local_ray_for(res.in_process) and res.num_workers == 1 and not res.use_gpu and not res.custom


def local_ray_for(switch: AutoSwitch) -> bool:
    """Whether work may run in the driver's process: a one-node, GPU-less Ray this process started
    (`rayutil.local_cpu_ray`). An `in_process: true` switch where that Ray is not there is an error naming
    the field (training and RL kinds alike)."""
    local = local_cpu_ray()
    if switch is True and not local:
        raise ValueError("resources.in_process: true needs a one-node, GPU-less Ray started by this process "
                         "(`llmray run` without a cluster address); set in_process: auto or false")
    return local


def scaling_config(res: Resources):
    """Resources -> ray.train.ScalingConfig."""
    from ray.train import ScalingConfig

    per_worker = {"CPU": res.cpus_per_worker, **res.custom}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    return ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker)


class DataPlacement(StrictModel):
    """Which nodes a data stage's Ray Data tasks and actors may run on."""

    labels: dict[str, str] = Field(
        default_factory=dict, json_schema_extra=EXECUTION_ONLY, description="Node labels every Ray Data task and actor of the stage requires, e.g. "
                                          "{node-group: cpu} (empty: any node; an unmatched label leaves the work "
                                          "pending).")


@contextlib.contextmanager
def data_placement(placement: DataPlacement | None):
    """Scope Ray Data to the labelled nodes while a data stage runs (Datasets created inside copy it).

    The runner wraps every stage run in it with the stage's `placement` (None for kinds without one)."""
    if placement is None or not placement.labels:
        yield
        return
    from ray.data import DataContext

    opts = DataContext.get_current().execution_options
    saved = opts.label_selector
    opts.label_selector = dict(placement.labels)
    try:
        yield
    finally:
        opts.label_selector = saved
