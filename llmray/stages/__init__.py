"""The stage registry: one plain dict from `kind` to the module that implements it.

A stage module has three names (the `Stage` protocol below):
- `Config`: a pydantic model (subclass of `llmray.config.StageConfig`) with
  `kind: Literal["<kind>"]`, `description=` on every field, validators that raise;
- `VERSION`: a string; bump it when the kind's outputs would change for the same config
  (it is part of the fingerprint, so cached results of the old code are redone);
- `run(config, ctx) -> StageResult`: writes outputs under `ctx.out_dir`, returns metrics.

Stage modules import only light things at top level (pydantic, stdlib): `llmray validate`
imports every one of them. Heavy imports (torch, ray, vllm) go inside `run` or submodules.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol

from llmray.stages.base import StageContext, StageResult  # noqa: F401  (re-exported)

# kind -> module path. Add a kind: write the module, add one line here.
STAGES: dict[str, str] = {
    "ppo": "llmray.stages.ppo",
    "grpo": "llmray.stages.grpo",
    "curate": "llmray.stages.curate",
    "sft": "llmray.stages.sft",
    "reward": "llmray.stages.reward",
    "dpo": "llmray.stages.dpo",
    "pretrain": "llmray.stages.pretrain",
    "tokenizer": "llmray.stages.tokenizer",
    "tokenize": "llmray.stages.tokenize",
    "align": "llmray.stages.align",
    "constitution": "llmray.stages.constitution",
    "eval": "llmray.stages.eval",
}


class Stage(Protocol):
    Config: type
    VERSION: str

    def run(self, config, ctx: StageContext) -> StageResult: ...


def load_stage_modules() -> dict[str, ModuleType]:
    """Import every registered stage module (kind -> module)."""
    return {kind: importlib.import_module(path) for kind, path in STAGES.items()}


def get_stage(kind: str) -> Stage:
    return importlib.import_module(STAGES[kind])  # type: ignore[return-value]
