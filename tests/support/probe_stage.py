"""A test-only stage kind for runner tests: counts its runs and can be told to fail.

It does real (small) work through Ray so the runner is exercised with Ray up: sums a range in a
Ray task and adds the sums of its inputs. A task, not Ray Data: a Ray Data execution costs ~6 s on
2 busy cores even for five rows, and the runner tests run this stage dozens of times (the real
stages' Ray Data use is checked by their own tests and the end-to-end run).
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import Field

from llmray.config import EXTERNAL_INPUT, StageConfig
from llmray.stages.base import StageResult

VERSION = "1"


class Config(StageConfig):
    INPUTS = {"data": ("probe",)}
    kind: Literal["probe"] = Field("probe", description="kind")
    data: list[str] | None = Field(None, description="Input probe stages.")
    n: int = Field(10, ge=0, description="Sum 0..n-1.")
    fail: bool = Field(False, description="Raise after writing part of the output.")
    path: str | None = Field(None, json_schema_extra=EXTERNAL_INPUT,
                             description="A file outside the run directory whose line count is added.")


def run(cfg: Config, ctx) -> StageResult:
    import ray

    def sum_range(n: int) -> int:  # defined here: shipped to the worker by value (this module is not on its path)
        return sum(range(n))

    total = ray.get(ray.remote(num_cpus=0.1)(sum_range).remote(cfg.n)) if cfg.n else 0
    if cfg.path:
        total += len(open(cfg.path, encoding="utf-8").read().splitlines())
    for inp in ctx.inputs.get("data", []):
        total += json.loads(inp.path("sum").read_text())["sum"]
    (ctx.out_dir / "partial.txt").write_text("half-written")
    counter = ctx.run_dir.parent / f"runs-{ctx.name}.txt"  # outside the run dir: test bookkeeping only
    counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
    if cfg.fail or os.environ.get(f"PROBE_FAIL_{ctx.name.upper()}"):
        raise RuntimeError(f"injected failure in {ctx.name}")
    (ctx.out_dir / "sum.json").write_text(json.dumps({"sum": total}))
    ctx.log.info("sum %s", total)
    return StageResult(metrics={"sum": total}, outputs={"sum": "sum.json"})
