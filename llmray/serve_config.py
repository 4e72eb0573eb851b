"""The top-level `serve:` section of a pipeline file (kept light: no Ray import).

`llmray serve` (llmray/serve/launch.py) reads it. `models` lists stage names (a stage's model/,
served as <pipeline>/<stage>) and external models (`{name, from}`: a Hugging Face folder or an
object-store URI, served as <pipeline>/<name>, checked like every `from:` by llmray.models);
`llmray/graph.py` checks that stage entries name stages, external names clash with none, and
`default` names a served model. Defaults suit a 2-core laptop: loopback only, fractional CPUs per
replica (whole-CPU actors starve each other on 2 cores), small caps.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from llmray.config import EXTERNAL_INPUT, NAME_RE, StrictModel
from llmray.models import ModelSource
from llmray.resources import ReplicaResources


class ExternalModel(StrictModel):
    """A model not made by this pipeline, served next to the stage models (e.g. the checkpoint a run
    started from, to compare against what the pipeline made of it)."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    name: str = Field(pattern=NAME_RE, description="Short name; model id <pipeline>/<name>. Must not be the "
                                                   "name of a stage of the pipeline.")
    from_: ModelSource = Field(alias="from", json_schema_extra=EXTERNAL_INPUT,
                               description="Hugging Face causal-LM folder: a local path, or an object-store "
                                           "URI (s3://bucket/path, ?endpoint_override=host:port&scheme=http "
                                           "for S3-compatible stores) downloaded once into <run>/.models/.")


# A served model: a plain string is a stage name, a mapping an external model. The tag keeps a bad
# mapping's errors to its own fields (serve.models.<i>.external.<field>).
ServedModel = Annotated[
    Union[Annotated[str, Tag("stage")], Annotated[ExternalModel, Tag("external")]],  # noqa: UP007
    Discriminator(lambda v: "stage" if isinstance(v, str) else "external")]


def served_name(item) -> str:
    """The short name of a `serve.models` item: the stage name, or the external model's name."""
    return item if isinstance(item, str) else item.name


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling per model deployment (replaces the fixed `replicas`)."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas per model.")
    max_replicas: int = Field(2, ge=1, description="Most replicas per model.")
    target_ongoing_requests: float = Field(8, gt=0, description="Requests in flight per replica to aim for.")

    @model_validator(mode="after")
    def _order(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self


class GuardrailConfig(StrictModel):
    """Output screening applied to every response before it leaves (see llmray/serve/guardrail.py)."""

    use_align: bool = Field(
        True, description="Screen with the trained guardrail of the pipeline's last completed, current align "
                          "stage, when there is one.")
    stage: str | None = Field(
        None, description="Name the align stage whose guardrail/ screens responses (instead of the last one).")
    blocklist: list[str] = Field(
        default_factory=list,
        description="Regular expressions (case-insensitive); a matching response is refused.")
    function: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'module:callable' screening (prompt, response) -> Verdict | bool, or a Guardrail class.")
    message: str | None = Field(
        None, description="Text sent instead of a refused response (default: the align guardrail's refusal "
                          "text, else \"I can't help with that.\").")
    required: bool = Field(
        True, description="When `stage` is set but its guardrail/ folder is missing: true = refuse to start.")


class VLLMOptions(StrictModel):
    """Settings passed to vLLM when the vLLM engine is used."""

    kv_cache_gb: float = Field(1, gt=0, description="CPU build: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="GPU build: fraction of GPU memory vLLM may use (per replica).")
    enforce_eager: bool = Field(True, description="Skip graph capture/compilation: faster start, slower decode.")
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$", description="Weights dtype.")


class PromoteConfig(StrictModel):
    """How a new version goes behind a served name (`llmray promote`, or automatically after a run):
    the candidate is loaded next to the live version, gets `canary` of the name's traffic for
    `window_s`, and is completed or rolled back by the thresholds below."""

    mode: str = Field("manual", pattern="^(manual|auto)$",
                      description="manual: only `llmray promote`. auto: after `llmray run`, each served name whose "
                                  "stage has a new completed version that passed the align gate is promoted "
                                  "(when a server for this pipeline answers). `promote: auto` is short for "
                                  "`promote: {mode: auto}`.")
    canary: float = Field(0.1, ge=0, le=1, description="Share of the name's requests sent to the candidate while "
                                                      "it is watched (0: switch at once, no watch window).")
    window_s: float = Field(30, gt=0, description="How long the canary is watched before the verdict.")
    min_requests: int = Field(5, ge=0, description="Canary requests needed for a verdict; fewer by the end of "
                                                  "the window extends it up to 4x, then rolls back.")
    max_error_rate: float = Field(0.0, ge=0, le=1, description="Roll back when more of the canary's requests "
                                                               "fail than this share.")
    max_latency_ratio: float = Field(3.0, gt=0, description="Roll back when the canary's p95 latency exceeds "
                                                            "this multiple of the live version's p95.")
    max_block_rate: float = Field(0.5, ge=0, le=1, description="Roll back when the guardrail refuses more than "
                                                               "this share of the canary's answers.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        return {"mode": v} if isinstance(v, str) else v


class ServeConfig(ReplicaResources):
    """What `llmray serve` exposes, and how. What each model replica reserves (`num_cpus`, `num_gpus`,
    `custom`, `threads`) comes from llmray.resources.ReplicaResources, flat in this section."""

    models: list[ServedModel] = Field(
        description="What is served, side by side: stage names (their model/; model id <pipeline>/<stage>) and "
                    "external models `{name: qwen-base, from: /models/qwen}` (model id <pipeline>/<name>).")
    default: str | None = Field(
        None, description="Model used when a request names none: a stage or external name of `models`. Unset: "
                          "the last of `models` whose align gate did not block it.")
    host: str = Field("127.0.0.1", description="Bind address. Loopback by default; set 0.0.0.0 deliberately.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field(
        "/", pattern=r"^/([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$",
        description="URL prefix of this pipeline's application (several pipelines can share one Serve); "
                    "the API is at <prefix>/v1.")
    engine: str = Field("auto", pattern="^(auto|vllm|hf)$",
                        description="auto: vLLM if installed, else transformers.")
    replicas: int = Field(1, ge=1,
                          description="Replicas per model deployment (ignored when `autoscaling` is set).")
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscale each model deployment instead.")
    ingress_num_cpus: float = Field(0.1, ge=0, description="CPUs reserved for the HTTP ingress replica.")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable holding the API key; requests then need Bearer auth.")
    max_tokens: int = Field(512, ge=1, description="Cap on max_tokens per request.")
    max_prompt_tokens: int = Field(1024, ge=1, description="Prompts longer than this are refused with 400.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request bodies over this are refused with 413.")
    max_n: int = Field(8, ge=1, description="Cap on `n` (choices per request).")
    max_concurrent_requests: int = Field(
        256, ge=1, description="Requests in flight in the ingress replica; beyond this new requests get 429.")
    max_ongoing_requests: int = Field(
        128, ge=1, description="Requests a model replica works on at once (Ray Serve max_ongoing_requests).")
    max_queued_requests: int = Field(
        256, ge=1, description="Requests waiting for a model replica; beyond this new requests get 503.")
    batch_size: int = Field(16, ge=1, description="transformers engine: most requests decoded as one batch.")
    batch_wait_ms: float = Field(
        0, ge=0, description="transformers engine: wait this long for a batch to fill (0: never delay a request).")
    request_timeout_s: float = Field(300, gt=0, description="End-to-end HTTP request timeout.")
    deploy_timeout_s: float = Field(600, gt=0,
                                    description="How long `llmray serve` waits for the models to be up.")
    high_throughput: bool = Field(
        True, description="Ray Serve's high-throughput mode: HAProxy ingress and gRPC between replicas "
                          "(RAY_SERVE_ENABLE_HA_PROXY, RAY_SERVE_THROUGHPUT_OPTIMIZED). Applied when llmray "
                          "starts Serve; a Serve instance already running keeps its mode.")
    access_log: bool = Field(False, description="Log every request in the replica logs (costs time per request).")
    guardrail: GuardrailConfig = Field(
        default_factory=GuardrailConfig, description="Output guardrail applied to every response.")
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="vLLM engine settings.")
    names: dict[str, str] = Field(
        default_factory=dict,
        description="Served names with versions: `{assistant: dpo}` serves stage dpo's model as `assistant`; "
                    "`llmray promote` later moves a name to another stage or a newer run of it, without a "
                    "restart (the current version is restored from <run>/.serve/routes.json on restart).")
    promote: PromoteConfig = Field(default_factory=PromoteConfig,
                                   description="Promotion of new versions behind `names` (canary, rollback).")

    @field_validator("names")
    @classmethod
    def _name_ids(cls, names: dict) -> dict:
        import re

        bad = sorted(n for n in names if not re.fullmatch(NAME_RE, n))
        if bad:
            raise ValueError(f"names: {bad} are not valid names (letters, digits, _ and -)")
        return names

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list) -> list:
        if not models:
            raise ValueError("serve.models needs at least one model")
        names = [served_name(m) for m in models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models listed twice: {dup}")
        return models

    @model_validator(mode="after")
    def _batch_fits(self):
        if self.batch_size > self.max_ongoing_requests:
            raise ValueError(f"batch_size ({self.batch_size}) cannot exceed max_ongoing_requests "
                             f"({self.max_ongoing_requests}): a replica never holds more requests than that")
        return self
