"""The pipeline file reference, generated from the pydantic models, so the docs never drift from them.

Data flow: a pydantic model class --`model_table`--> Markdown tables, one per config block: the
block's own table first, then every nested block (e.g. `train:`, `resources:`) reached from it,
each nested class printed once per page. Fields appear under the name written in YAML (the alias:
`from`, never `from_`) with the default as it resolves for that block: a nested block whose
default is its class's own defaults reads `(defaults)` and gets its table, so a kind's subclass
(e.g. `DpoTrain`, lr 5e-06) shows its own values, never the generic base class's.

Consumers: the docs site's build hook (`docs/hooks.py`) replaces `<!-- reference: <what> -->` in a
page with `reference(<what>)` (a stage kind, `pipeline` or `serve`); `llmray schema` prints
`reference_markdown()`, everything at once.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(ann) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(ann)[0])
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _nested_models(ann) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out = []
    for a in typing.get_args(ann):
        out.extend(_nested_models(a))
    return out


def _shown(value) -> str:
    """A default as a reader writes it: YAML-ish scalars, short lists; built-in model lists summarised."""
    if isinstance(value, BaseModel):
        return "(defaults)"
    if isinstance(value, (list, tuple)) and any(isinstance(v, BaseModel) for v in value):
        return f"(built-in list of {len(value)})"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "`''`"
    return f"`{value!r}`".replace("|", "\\|")


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        return _shown(field.default)
    if field.default_factory is not None:
        try:
            return _shown(field.default_factory())
        except TypeError:  # a factory that needs the validated data
            return "(computed)"
    return "**required**"


def yaml_name(name: str, field) -> str:
    """The key a user writes: the alias when there is one (`from` for the attribute `from_`)."""
    return field.alias or name


def _notes(field) -> str:
    """What the field's markers mean for caching (see llmray.config: EXECUTION_ONLY, EXTERNAL_INPUT)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "fingerprint" in (field.description or "").lower():  # the description already says it
        return ""
    if extra.get("fingerprint") is False:
        return " _Not fingerprinted: changing it reruns nothing._"
    if extra.get("external_input"):
        return " _External input: enters the fingerprint by content._"
    return ""


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, `<name>` kept visible (not read as an HTML tag)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    # Outside code spans only (even parts): inside backticks Markdown shows `&lt;` literally.
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def model_table(model: type[BaseModel], path: str, seen: set, level: int = 3, title: str | None = None) -> list[str]:
    """The table of `model` (headed `title` or `path`) followed by the tables of the blocks nested in
    it that are not in `seen` yet (each class once per page), headed by their dotted YAML path."""
    lines = [f"{'#' * level} {title or f'`{path}`'}", ""]
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    if doc:
        lines += [doc, ""]
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    nested = []
    for name, field in model.model_fields.items():
        key = yaml_name(name, field)
        desc = _cell(field.description or "") + _notes(field)
        lines.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        for sub in _nested_models(field.annotation):
            if sub not in seen:
                seen.add(sub)
                nested.append((sub, f"{path}.{key}" if path else key))
    lines.append("")
    for sub, sub_path in nested:
        lines.extend(model_table(sub, sub_path, seen, level))
    return lines


def _stage_modules() -> dict:
    from llmray.stages import load_stage_modules

    return load_stage_modules()


def kinds() -> list[str]:
    """Every registered stage kind."""
    return sorted(_stage_modules())


def _pipeline_top_tables(level: int) -> list[str]:
    """The top level of the pipeline file, without `stages:` (one page per kind) and `serve:` (its page)."""
    from llmray.pipeline import pipeline_class

    pipe = pipeline_class()
    lines = [f"{'#' * level} `(top level)`", "", "| field | type | default | description |",
             "| --- | --- | --- | --- |"]
    seen: set = set()
    nested = []
    for name, field in pipe.model_fields.items():
        if name == "stages":
            lines.append("| `stages` | mapping name → stage | **required** | one entry per stage; `kind` picks the "
                         "implementation (one page per kind) |")
            continue
        if name == "serve":
            lines.append("| `serve` | ServeConfig \\| null | `null` | what `llmray serve` exposes (see Serve) |")
            continue
        desc = _cell(field.description or "") + _notes(field)
        lines.append(f"| `{yaml_name(name, field)}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        nested += [(sub, name) for sub in _nested_models(field.annotation)]
    lines.append("")
    for sub, key in nested:
        seen.add(sub)
        lines.extend(model_table(sub, key, seen, level))
    return lines


def reference(what: str, level: int = 3) -> str:
    """Markdown tables for one stage kind, `pipeline` (the top level) or `serve`."""
    if what == "pipeline":
        lines = _pipeline_top_tables(level)
    elif what == "serve":
        from llmray.serve_config import ServeConfig

        lines = model_table(ServeConfig, "serve", set(), level)
    else:
        modules = _stage_modules()
        if what not in modules:
            raise KeyError(f"no reference for {what!r}: known are pipeline, serve and the kinds {sorted(modules)}")
        lines = model_table(modules[what].Config, "", set(), level, title=f"`stages.<name>` (kind: `{what}`)")
    return "\n".join(lines).rstrip() + "\n"


def reference_markdown() -> str:
    """Everything at once (`llmray schema`): the top level, serve, then every stage kind."""
    parts = ["## Pipeline file reference", "",
             "_Generated by `llmray schema` from the pydantic models; the docs site shows the same tables, "
             "one page per stage kind._", "", reference("pipeline"), reference("serve")]
    parts += [reference(kind) for kind in kinds()]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":  # python -m llmray.schema_doc [what]  -> print a reference
    import sys

    print(reference(sys.argv[1]) if len(sys.argv) > 1 else reference_markdown())
