"""Defaults hold however much of a block the user writes, and the reference prints them as they resolve.

For every stage kind and every nested config block (`train:`, `kl:`, `resources.rollout:`, ...): the
documented default of each field (the one `llmray schema` / the docs print) equals the effective value
from a minimal stage, and from a stage whose block sets only one sibling field. A per-kind default
given through `default_factory=lambda: Block(lr=...)` fails this: it only holds while the block is absent.
"""

from __future__ import annotations

import copy

import pytest
from pydantic import BaseModel, ValidationError

from llmray.schema_doc import model_table
from llmray.stages import STAGES, get_stage

# The smallest valid block of each kind (stage references are only names at this level).
MINIMAL = {
    "curate": {"kind": "curate", "sources": [{"type": "python-docs"}]},
    "tokenizer": {"kind": "tokenizer", "data": "corpus"},
    "tokenize": {"kind": "tokenize", "data": "corpus", "tokenizer": "bpe"},
    "pretrain": {"kind": "pretrain", "data": "tokens"},
    "sft": {"kind": "sft", "init": "base"},
    "reward": {"kind": "reward", "init": "chat"},
    "dpo": {"kind": "dpo", "init": "chat"},
    "ppo": {"kind": "ppo", "init": "chat", "reward": "rm"},
    "grpo": {"kind": "grpo", "init": "chat", "reward": "rm"},
    "constitution": {"kind": "constitution", "init": "chat"},
    "align": {"kind": "align", "models": ["chat"]},
    "eval": {"kind": "eval", "models": ["chat"]},
}


def test_every_kind_has_a_minimal_block():
    assert sorted(MINIMAL) == sorted(STAGES)


def _documented(field):
    return field.get_default(call_default_factory=True)


def _blocks(model: BaseModel, path: tuple = ()):
    """(path, block) for every nested config block, the optional ones (None by default) included."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield path + (name,), value
            yield from _blocks(value, path + (name,))


def _set(raw: dict, path: tuple, block: dict) -> dict:
    out = copy.deepcopy(raw)
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = block
    return out


def _get(model, path: tuple):
    for key in path:
        model = getattr(model, key)
    return model


def _alias(field, name: str) -> str:
    return field.alias or name


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_documented_defaults_hold_for_minimal_and_partial_blocks(kind):
    config = get_stage(kind).Config
    minimal = config.model_validate(copy.deepcopy(MINIMAL[kind]))
    checked = 0
    for name, field in config.model_fields.items():  # the stage's own fields
        if _alias(field, name) not in MINIMAL[kind] and field.is_required() is False:
            assert getattr(minimal, name) == _documented(field), f"{kind}.{name}"
            checked += 1
    for path, block in list(_blocks(minimal)):
        fields = type(block).model_fields
        dumped = block.model_dump(mode="json", by_alias=True)
        for name, field in fields.items():
            documented = _documented(field)
            where = f"{kind}.{'.'.join(path)}.{name}"
            assert getattr(block, name) == documented, f"{where}: minimal block resolves to {getattr(block, name)!r}"
            for sibling, sfield in fields.items():
                if sibling == name:
                    continue
                # The block written with only `sibling`, at its own default value: nothing else may move.
                raw = _set(MINIMAL[kind], path, {_alias(sfield, sibling): dumped[_alias(sfield, sibling)]})
                try:
                    partial = config.model_validate(raw)
                except ValidationError as e:  # pragma: no cover - a message beats a bare failure
                    pytest.fail(f"{where}: writing only {sibling} at its default is refused: {e}")
                assert getattr(_get(partial, path), name) == documented, (
                    f"{where}: a block that sets only {sibling!r} resolves {name} to "
                    f"{getattr(_get(partial, path), name)!r}, documented {documented!r}")
                checked += 1
                break  # one sibling per field is the case the bug needs
    assert checked > 5


@pytest.mark.parametrize("kind,block,field,value", [
    ("dpo", "train", "lr", 5e-6), ("sft", "train", "lr", 1e-4), ("reward", "train", "lr", 5e-5),
])
def test_the_per_kind_learning_rate_survives_a_partial_train_block(kind, block, field, value):
    config = get_stage(kind).Config
    partial = config.model_validate({**MINIMAL[kind], block: {"steps": 50}})
    assert getattr(getattr(partial, block), field) == value
    assert partial.train.steps == 50
    # ... and the reference prints what resolves, not the generic block's 3e-4.
    table = "\n".join(model_table(config, f"stages.<name> (kind: {kind})", set()))
    assert f"| `lr` | float | `{value!r}` |" in table
    assert "| `lr` | float | `0.0003` |" not in table
