"""The pipeline file as a whole: loading, dotted overrides, validation, readable config errors.

Data flow: YAML text --yaml.safe_load--> dict --apply_overrides--> dict
--pydantic (a discriminated union of every registered stage kind's Config, the `serve:` and
`tracking:` blocks)--> Pipeline --check_graph (stage references, kinds, cycles)--> a validated Pipeline.

This module sits above the stage kinds (it assembles their configs) and the serve config; the
building blocks every config uses (StrictModel, StageConfig, the field markers, ConfigError) live
below in llmray.config, so stage modules never import this one.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, field_validator

from llmray.config import _MISSING, NAME_RE, ConfigError, RayConfig, StrictModel, TrackingConfig
from llmray.graph import check_graph
from llmray.serve_config import ServeConfig
from llmray.stages import STAGES, load_stage_modules


def _stage_union():
    configs = tuple(m.Config for m in load_stage_modules().values())
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="kind")]  # noqa: UP007


@functools.cache
def _pipeline_class(kinds: tuple[str, ...]):
    stage_type = _stage_union()

    class Pipeline(StrictModel):
        """A whole pipeline file."""

        name: str = Field(description="Pipeline name; the run directory is <workdir>/<name>.", pattern=NAME_RE)
        workdir: str = Field("runs", description="Where run directories live: a local or mounted path (on a "
                                                 "cluster, storage every node mounts, e.g. /mnt/shared/runs), or "
                                                 "an object-store URI opened with pyarrow.fs (s3://bucket/prefix, "
                                                 "gs://..., S3-compatible stores with ?endpoint_override=host:port"
                                                 "&scheme=http). With a URI, stages work in `mirror_dir`, each "
                                                 "completed stage is uploaded (manifest.json last) and Ray Train "
                                                 "checkpoints go straight to the store.")
        mirror_dir: str = Field(".llmray-cache", description="Local working copy when `workdir` is a URI: stages "
                                                             "read and write <mirror_dir>/<name>; completed inputs "
                                                             "missing there are downloaded from the store. Relative "
                                                             "to the current directory. Unused for a local workdir.")
        seed: int = Field(0, description="Default seed, recorded in pipeline.resolved.yaml.")
        ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection settings.")
        stages: dict[str, stage_type] = Field(  # type: ignore[valid-type]
            description="Stage name -> stage config; `kind` picks the implementation."
        )
        serve: ServeConfig | None = Field(None, description="What `llmray serve` exposes.")
        tracking: TrackingConfig = Field(default_factory=TrackingConfig,
                                         description="Experiment tracking (MLflow by default; TensorBoard, W&B).")

        @field_validator("workdir")
        @classmethod
        def _workdir(cls, workdir: str) -> str:
            # A local path as is; a URI must name a scheme pyarrow.fs opens and parse (no network here).
            from llmray.storage import check_workdir

            return check_workdir(workdir)

        @field_validator("mirror_dir")
        @classmethod
        def _local_mirror(cls, mirror_dir: str) -> str:
            from llmray.storage import is_uri

            if is_uri(mirror_dir):
                raise ValueError("mirror_dir is the local working copy of the run directory: give a local path")
            return mirror_dir

        @field_validator("stages")
        @classmethod
        def _names(cls, stages: dict) -> dict:
            for name in stages:
                if not re.match(NAME_RE, name):
                    raise ValueError(f"stage name {name!r} must match {NAME_RE}")
            if not stages:
                raise ValueError("a pipeline needs at least one stage")
            return stages

    return Pipeline


def pipeline_class():
    """The Pipeline model for the kinds registered right now."""
    return _pipeline_class(tuple(sorted(STAGES)))


# ---------------------------------------------------------------- loading


def apply_overrides(raw: dict, overrides: list[str], source: str = "<overrides>") -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(source, [(item, "override must look like dotted.path=value", _MISSING)])
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node = raw
        for depth, key in enumerate(keys[:-1]):
            nxt = node.get(key) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[key] = {}
            if not isinstance(nxt, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(source, [(where, f"cannot set {path}: {where} is not a mapping", nxt)])
            node = nxt
        node[keys[-1]] = yaml.safe_load(text) if text != "" else None
    return raw


def _yaml_lines(text: str) -> dict[str, int]:
    """Dotted key path -> 1-based line number, for error messages."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, prefix: str):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}.{i}"
                lines[path] = item.start_mark.line + 1
                walk(item, path)

    walk(root, "")
    return lines


def _pydantic_items(err: ValidationError, raw: dict) -> list[tuple[str, str, Any]]:
    items = []
    for e in err.errors():
        # Drop the discriminator tag pydantic inserts (stages.x.<kind>.field -> stages.x.field).
        loc = [str(p) for p in e["loc"]]
        if len(loc) >= 3 and loc[0] == "stages":
            stage = raw.get("stages", {}).get(loc[1]) if isinstance(raw.get("stages"), dict) else None
            if isinstance(stage, dict) and loc[2] == stage.get("kind"):
                loc.pop(2)
        value = e.get("input", _MISSING) if e["type"] not in ("missing",) else _MISSING
        if isinstance(value, dict):
            value = _MISSING  # the whole block is noise; the path says where
        msg = e["msg"]
        if e["type"] == "union_tag_invalid" or (e["type"] == "literal_error" and loc[-1:] == ["kind"]
                                                 and len(loc) == 3 and loc[0] == "stages"):
            msg = f"unknown stage kind; expected one of {sorted(STAGES)}"
            if loc[-1:] != ["kind"]:
                loc.append("kind")
            stage = raw.get("stages", {}).get(loc[1], {}) if len(loc) > 1 else {}
            value = stage.get("kind", _MISSING) if isinstance(stage, dict) else _MISSING
        items.append((".".join(loc), msg, value))
    return items


def parse_pipeline(raw: Any, source: str = "<pipeline>", text: str | None = None, overrides=()):
    """Validate a raw dict into a Pipeline (overrides first, then schema, then graph)."""
    lines = _yaml_lines(text) if text else {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the pipeline file must be a YAML mapping", type(raw).__name__)])
    apply_overrides(raw, list(overrides), source)
    try:
        pipe = pipeline_class().model_validate(raw)
    except ValidationError as err:
        raise ConfigError(source, _pydantic_items(err, raw), lines) from None
    problems = check_graph(pipe)
    if problems:
        raise ConfigError(source, problems, lines)
    return pipe


def load_pipeline(path: str | Path, overrides=()):
    """Read, override and validate a pipeline file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [("", f"cannot read the file: {e.strerror}", _MISSING)]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(str(path), [("", f"invalid YAML: {getattr(e, 'problem', e)}", _MISSING)],
                          {"": line} if line else None) from None
    return parse_pipeline(raw, str(path), text, overrides)


def dump_resolved(pipe) -> str:
    """The validated config with defaults filled, as YAML."""
    return yaml.safe_dump(pipe.model_dump(mode="json"), sort_keys=False)
