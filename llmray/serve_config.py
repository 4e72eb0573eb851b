"""The top-level `serve:` section of a pipeline file (kept light: no Ray import)."""

from __future__ import annotations

from pydantic import Field

from llmray.config import StrictModel


class ServeConfig(StrictModel):
    """What `llmray serve` exposes, and how."""

    models: list[str] = Field(description="Stage names whose model/ is served; model id is <pipeline>/<stage>.")
    default: str | None = Field(None, description="Model used when a request names none; one of `models`.")
    host: str = Field("127.0.0.1", description="Bind address. Loopback by default; set 0.0.0.0 deliberately.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    engine: str = Field("auto", pattern="^(auto|vllm|hf)$", description="auto: vLLM if installed, else transformers.")
    replicas: int = Field(1, ge=1, description="Replicas per model deployment.")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per replica (fractional: replicas mostly wait).")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (fractions allowed).")
    api_key_env: str | None = Field(
        None, description="Name of an environment variable holding the API key; requests then need Bearer auth."
    )
    max_tokens: int = Field(512, ge=1, description="Cap on max_tokens per request.")
    max_prompt_tokens: int = Field(1024, ge=1, description="Prompts longer than this are refused with 400.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request bodies over this are refused with 413.")
