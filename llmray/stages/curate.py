"""The `curate` stage kind: raw sources -> a clean, filtered, scored, deduplicated, decontaminated corpus.

Outputs (under the stage folder): `data/*.parquet` (id, text, source, meta, quality, toxicity),
`rejected/<operator>.jsonl` (samples of what each operator removed, with the reason),
`quarantine/<source>.jsonl` (every record that could not be read, with the reason and the raw
line), `decontamination.json` and `quality_model.npz` when those operators run. Metrics: docs_in,
docs_out, quarantined, funnel (ordered [{op, in, out}]), removed, reasons, edits, per-source counts,
dedup and model reports. Nothing is lost: docs_in = docs_out + sum(removed) + quarantined.

The implementation lives in `llmray.curate` (imported lazily by `run`); this module holds only the
config so `llmray validate` stays light.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmray.config import StageConfig
from llmray.curate.config import (
    BoilerplateConfig,
    C4Config,
    CleanConfig,
    CodeFilterConfig,
    DecontaminateConfig,
    ExactDedupConfig,
    ExtractConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    LicenseConfig,
    NearDedupConfig,
    OutputConfig,
    PiiConfig,
    QualityConfig,
    SourceConfig,
    ToxicityConfig,
    UrlFilterConfig,
    default_source_name,
)
from llmray.resources import DataPlacement

VERSION = "2"  # 2: the python-docs source's signatures (meta) without memory addresses


class Config(StageConfig):
    """Streaming data curation on Ray Data; each operator block can be switched off with `enabled: false`."""

    kind: Literal["curate"] = "curate"
    sources: list[SourceConfig] = Field(
        min_length=1, description="Inputs, read in this order (the order decides which duplicate survives).")
    workers: int = Field(
        2, ge=1, le=4096, description="CPUs Ray Data may use: task concurrency, actor pool sizes, shard actors.")
    batch_size: int = Field(256, ge=1, le=100_000, description="Documents per Ray Data batch.")
    url_filter: UrlFilterConfig = Field(
        default_factory=UrlFilterConfig, description="URL block/allow lists (warc sources).")
    license: LicenseConfig = Field(
        default_factory=LicenseConfig, description="Repository licence detection and allow list (repo sources).")
    code_filter: CodeFilterConfig = Field(
        default_factory=CodeFilterConfig, description="Vendored/generated/minified/binary file rules (repo sources).")
    extract: ExtractConfig = Field(
        default_factory=ExtractConfig, description="HTML main-text extraction (warc sources).")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Unicode/whitespace repair.")
    language: LanguageConfig = Field(
        default_factory=LanguageConfig, description="Language identification and the `languages:` filter.")
    boilerplate: BoilerplateConfig = Field(
        default_factory=BoilerplateConfig, description="Removal of lines repeated across many documents.")
    gopher_quality: GopherQualityConfig = Field(
        default_factory=GopherQualityConfig, description="Gopher quality rules.")
    gopher_repetition: GopherRepetitionConfig = Field(
        default_factory=GopherRepetitionConfig, description="Gopher repetition rules.")
    c4: C4Config = Field(default_factory=C4Config, description="C4 rules (off by default: they remove code).")
    fineweb: FineWebConfig = Field(default_factory=FineWebConfig, description="FineWeb rules.")
    toxicity: ToxicityConfig = Field(default_factory=ToxicityConfig, description="Toxicity scoring and filter.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Quality classifier and filter.")
    decontaminate: DecontaminateConfig = Field(
        default_factory=DecontaminateConfig, description="N-gram overlap removal against eval sets.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="PII redaction (off by default).")
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig, description="Exact deduplication.")
    near_dedup: NearDedupConfig = Field(
        default_factory=NearDedupConfig, description="MinHash LSH near-deduplication.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Output files and audit samples.")
    placement: DataPlacement = Field(
        default_factory=DataPlacement, description="Nodes this stage's Ray Data work may use (node labels).")

    @model_validator(mode="after")
    def _distinct_sources(self):
        names = [default_source_name(s, i) for i, s in enumerate(self.sources)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be distinct; {dup} repeats (set `name:` on the sources)")
        return self


def run(config: Config, ctx):
    from llmray.curate.pipeline import run_curate

    return run_curate(config, ctx)
