"""Test support for the tokenizer/tokenize tests (no tests here): a curate-like corpus written
directly as `data/*.parquet` (id, text), stage contexts for calling a stage's `run` directly,
and a stand-in `curate` stage module for running the real runner without the curate kind."""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Literal

from pydantic import Field

from llmray.config import StageConfig
from llmray.stages.base import StageContext, StageOutput, StageResult

EXTRA_TEXTS = [
    "Ünïcödé façade — naïve café, 日本語のテキスト, emoji 🎉🚀, Ελληνικά, русский текст.",
    "A literal <|endoftext|> inside a document is text, not a document separator.",
    "tabs\tand\r\nwindows newlines\n\n\nand   runs of   spaces   ",
    "x",
]


def corpus_texts(limit: int = 400) -> list[str]:
    from llmray.testing import stdlib_texts

    return stdlib_texts(limit) + EXTRA_TEXTS


def write_corpus(stage_dir: Path, texts: list[str], files: int = 3) -> list[dict]:
    """`<stage_dir>/data/part-*.parquet` with columns id, text; returns the records in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = Path(stage_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    records = [{"id": f"doc-{i:05d}", "text": t} for i, t in enumerate(texts)]
    per = -(-len(records) // files)
    for f in range(files):
        chunk = records[f * per:(f + 1) * per]
        pq.write_table(pa.Table.from_pylist(chunk), data / f"part-{f:03d}.parquet", row_group_size=50)
    return records


def stage_output(name: str, kind: str, stage_dir: Path, outputs: dict[str, str]) -> StageOutput:
    return StageOutput(name, kind, Path(stage_dir), {"status": "completed", "outputs": outputs})


def make_ctx(tmp: Path, name: str, kind: str, inputs: dict[str, StageOutput]) -> StageContext:
    out = Path(tmp) / name
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(name=name, kind=kind, fingerprint="test", run_dir=Path(tmp), out_dir=out,
                        work_dir=Path(tmp) / f".work-{name}", inputs={k: [v] for k, v in inputs.items()},
                        pipeline=None, log=logging.getLogger(f"test.{name}"))


class FakeCurateConfig(StageConfig):
    """Stand-in for the curate kind: writes the test corpus."""

    kind: Literal["curate"] = Field("curate", description="Selects this stage kind.")
    docs: int = Field(200, ge=1, description="Number of corpus documents to write.")


def _fake_curate_run(config, ctx) -> StageResult:
    records = write_corpus(ctx.out_dir, corpus_texts()[: config.docs])
    return StageResult(metrics={"docs_in": len(records), "docs_out": len(records)}, outputs={"data": "data"})


def fake_curate_module() -> types.ModuleType:
    mod = types.ModuleType("llmray_test_fake_curate")
    mod.Config, mod.VERSION, mod.run = FakeCurateConfig, "test", _fake_curate_run
    return mod
