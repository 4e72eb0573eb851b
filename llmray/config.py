"""The building blocks of every config: StrictModel, StageConfig, field markers, ConfigError.

Stage kinds, the serve config and the subsystems build their pydantic models from these; the
top-level blocks that are not stages (`ray:`, `tracking:`) live here too. Assembling and loading a
whole pipeline file is llmray.pipeline, which sits above the stage kinds: this module imports no
other llmray module, so anything may import it.

Every error becomes a ConfigError whose items name the file, the line (when the key came from the
file), the dotted field path and the offending value; the CLI prints those and exits 2, never a
traceback.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

NAME_RE = r"^[A-Za-z][A-Za-z0-9_-]*$"

# Field markers (pydantic `json_schema_extra`), read by the runner's fingerprint:
# EXECUTION_ONLY: the field changes how or where a stage runs, never what it produces (log cadence,
#   timeouts, checkpoint retention), so changing it does not rerun the stage.
# EXTERNAL_INPUT: the field names files, a folder or an object-store URI outside the run directory
#   (a `data:` spec, a `from:` model); their content enters the fingerprint, so an edit in place reruns
#   exactly the stages that read them. `builtin:` specs and `module:function` references are handled too.
EXECUTION_ONLY = {"fingerprint": False}
EXTERNAL_INPUT = {"external_input": True}


class ConfigError(Exception):
    """A bad pipeline file. `items` are (field path, message, value) triples."""

    def __init__(self, source: str, items: list[tuple[str, str, Any]], lines: dict[str, int] | None = None):
        self.source = source
        self.items = items
        self.lines = lines or {}
        super().__init__(self.render())

    def render(self) -> str:
        out = []
        for path, msg, value in self.items:
            line = self.lines.get(path)
            where = f"{self.source}:{line}" if line else self.source
            shown = "" if value is _MISSING else f" (got {value!r})"
            out.append(f"{where}: {path or '<top level>'}: {msg}{shown}")
        return "\n".join(out)


_MISSING = object()


class StrictModel(BaseModel):
    """Base for every config block: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def with_defaults(base: type[StrictModel], name: str, module: str, **defaults) -> type[StrictModel]:
    """A subclass of `base` named `name` (define it at module level in `module` so it pickles by
    reference) whose listed fields default to `defaults`, constraints and descriptions unchanged.

    Why not `Field(default_factory=lambda: base(lr=5e-6))`: that default only holds while the block is
    absent; a user who writes `train: {steps: 50}` gets `base`'s own lr. A subclass keeps a kind's
    defaults whatever part of the block the user writes, and the reference prints them as they resolve.
    """
    fields = {}
    for key, value in defaults.items():
        info = copy.copy(base.model_fields[key])
        info.default = value
        fields[key] = (base.model_fields[key].annotation, info)
    return create_model(name, __base__=base, __module__=module, __doc__=base.__doc__, **fields)


class WandbConfig(StrictModel):
    """Weights & Biases: one W&B run per stage, grouped by pipeline run (W&B has no nested runs)."""

    mode: Literal["offline", "online"] = Field(
        "offline", description="`offline` writes runs under <run>/wandb (upload later with `wandb sync`); "
                               "`online` sends them to the W&B server ($WANDB_API_KEY).")
    project: str | None = Field(None, description="W&B project; default: the pipeline name.")
    entity: str | None = Field(None, description="W&B entity (user or team); default: your W&B default.")


class TrackingConfig(StrictModel):
    """Experiment tracking: one run per pipeline run with a nested run per stage (llmray.tracking)."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    mlflow: bool = Field(True, description="Log to MLflow. Without `tracking_uri` the store is embedded: "
                                           "<run>/mlflow.db (SQLite) and <run>/mlartifacts, nothing to start.")
    tracking_uri: str | None = Field(
        None, description="An MLflow tracking server (http://127.0.0.1:5000) or database URI; default: the "
                          "embedded store in the run directory (with an object-store workdir: in its local "
                          "mirror, uploaded beside the stages).")
    experiment: str | None = Field(None, description="MLflow experiment name; default: the pipeline name.")
    tensorboard: bool = Field(False, description="Write TensorBoard event files under <run>/tensorboard/<stage>.")
    wandb: WandbConfig | None = Field(None, description="Log to Weights & Biases (`{mode: offline}` to enable).")
    required: bool = Field(False, description="Fail the run when a tracking backend cannot be reached at the "
                                              "start; by default it warns once and the pipeline goes on.")
    console_interval_s: float = Field(
        30.0, gt=0, description="When stdout is not a terminal (job logs, CI): seconds between plain "
                                "progress lines of a running stage.")
    log_models: bool | list[str] = Field(
        False, json_schema_extra=EXECUTION_ONLY,
        description="Log trained models to MLflow as `transformers`-flavour models when their stage completes "
                    "(stages with a `model/` output: pretrain, sft, reward, dpo, ppo, grpo): `true` for all, or a "
                    "list of stage names. Off by default: each logged model is a full copy of its files.")
    # `register` in the file; the attribute has another name because pydantic's BaseModel has `register`.
    registered_model: str | None = Field(
        None, alias="register", min_length=1, json_schema_extra=EXECUTION_ONLY,
        description="Register each logged model in the MLflow Model Registry as `<register>-<stage>` (one new "
                    "version per logged run); needs `log_models`.")

    @model_validator(mode="after")
    def _register_needs_models(self):
        if self.registered_model and not self.log_models:
            raise ValueError("tracking.register names a registered model, but tracking.log_models is off: "
                             "set log_models to true (or a list of stages)")
        if self.log_models and not self.mlflow:
            raise ValueError("tracking.log_models logs to MLflow, but tracking.mlflow is false")
        return self


class StageTracking(StrictModel):
    """Per-stage switches over the pipeline's `tracking:` block; unset keys follow the pipeline."""

    enabled: bool = Field(True, description="Track this stage at all (false: no run, no metrics).")
    mlflow: bool | None = Field(None, description="Override `tracking.mlflow` for this stage.")
    tensorboard: bool | None = Field(None, description="Override `tracking.tensorboard` for this stage.")
    wandb: bool | None = Field(None, description="false: leave this stage out of W&B.")


class StageConfig(StrictModel):
    """Fields every stage kind has. Subclasses set `kind: Literal[...]`.

    INPUTS maps a field name that holds a stage reference (a stage name, or a list of
    names) to the stage kinds it may point at. The runner reads it to build the DAG.
    """

    INPUTS: ClassVar[dict[str, tuple[str, ...]]] = {}

    kind: str = Field(description="Selects the stage implementation.")
    description: str | None = Field(None, json_schema_extra=EXECUTION_ONLY,
                                    description="Free text shown by `llmray plan`; not fingerprinted.")

    tracking: StageTracking | None = Field(
        None, json_schema_extra=EXECUTION_ONLY,
        description="Per-stage switches over the pipeline's `tracking:` block (e.g. `{tensorboard: false}`); "
                    "unset keys follow the pipeline. Not fingerprinted.")

    def input_refs(self) -> dict[str, list[str]]:
        """Field name -> the stage names it references (empty fields left out)."""
        refs: dict[str, list[str]] = {}
        for field in self.INPUTS:
            value = getattr(self, field)
            if value is None:
                continue
            refs[field] = list(value) if isinstance(value, (list, tuple)) else [value]
        return refs


class RayConfig(StrictModel):
    """How the runner connects to Ray."""

    address: str | None = Field(
        None, description="Ray address to join; default: $RAY_ADDRESS if set, else start a local Ray."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (ignored when joining).")
    object_store_mb: int | None = Field(
        None, ge=64, description="Object store size in MiB for a local Ray (ignored when joining)."
    )
    host: str = Field("127.0.0.1", description="Address a local Ray binds to. Keep loopback on a laptop.")


StageKind = Literal  # re-exported for stage modules: `kind: StageKind["curate"] = "curate"`
