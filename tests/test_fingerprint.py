"""Fingerprints cover what changes results, and nothing else (no Ray: fingerprints are computed from the
config and the external inputs alone).

- Execution-only fields (log/eval/checkpoint cadence, timeouts, CPUs reserved, description, placement)
  leave every fingerprint unchanged; fields that change results change the stage's and its dependents'.
- External inputs enter by content: an edit in place changes exactly the readers' fingerprints (and
  their dependents'), a touch without an edit changes nothing, a new file in a data folder counts,
  and a reward function's module counts by its source.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from llmray.config import EXECUTION_ONLY
from llmray.fingerprint import CACHE_FILE, InputDigests, external_inputs
from llmray.graph import ancestors
from llmray.pipeline import parse_pipeline
from llmray.runner import fingerprints, run_dir

TINY = Path(__file__).parent / "support" / "pipelines" / "tiny.yaml"


def _tiny_raw(tmp_path) -> dict:
    raw = yaml.safe_load(TINY.read_text())
    raw["workdir"] = str(tmp_path / "runs")
    return raw


def _fps(raw: dict) -> dict[str, str]:
    return fingerprints(parse_pipeline(copy.deepcopy(raw)))


def _execution_only_paths(model: BaseModel, path=()):
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        value = getattr(model, name)
        if isinstance(extra, dict) and extra.get("fingerprint") is False:
            yield path + (field.alias or name,), value
        elif isinstance(value, BaseModel):
            yield from _execution_only_paths(value, path + (field.alias or name,))


NONE_REPLACEMENT = {"threads": 3, "batch_size": 512,  # unset optional fields, given a value of their type
                    "tracking": {"tensorboard": True}}


def _other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 if value else 1
    if isinstance(value, str):
        return "changed"
    if isinstance(value, dict):
        return {"zone": 1.0} if not value else {}
    raise AssertionError(f"no other value for {value!r}")


def _set(raw: dict, path: tuple, value) -> None:
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {}) if node.get(key) is not None else node.setdefault(key, {})
    node[path[-1]] = value


def test_execution_only_fields_never_change_a_fingerprint(tmp_path):
    raw = _tiny_raw(tmp_path)
    pipe = parse_pipeline(copy.deepcopy(raw))
    base = fingerprints(pipe)
    changed = 0
    for stage, cfg in pipe.stages.items():
        for path, value in _execution_only_paths(cfg):
            new = copy.deepcopy(raw)
            other = NONE_REPLACEMENT.get(path[-1], "changed") if value is None else _other_value(value)
            if path[-1] == "labels":
                other = {"node-group": "cpu"}
            if path[-1] == "strategy":
                other = "SPREAD"
            if path[-1] in ("in_process", "colocate"):  # auto | true | false
                other = False
            _set(new["stages"][stage], path, other)
            ref = raw
            if path[-1] == "colocate":  # needs the hf engine: compare against the same stage on hf
                ref = copy.deepcopy(raw)
                for r in (ref, new):
                    r["stages"][stage].setdefault("rollout", {})["engine"] = "hf"
            try:
                fps = _fps(new)
            except Exception as e:  # a value a validator refuses says nothing about fingerprints
                pytest.fail(f"stages.{stage}.{'.'.join(path)}={other!r} was refused: {e}")
            assert fps == (base if ref is raw else _fps(ref)), \
                f"changing stages.{stage}.{'.'.join(path)} changed a fingerprint"
            changed += 1
    # The tiny pipeline has train blocks, RL roles and data placement: dozens of such fields.
    assert changed >= 40, changed
    named = {".".join(p) for cfg in pipe.stages.values() for p, _ in _execution_only_paths(cfg)}
    assert {"train.log_every", "train.eval_every", "train.keep_checkpoints", "train.checkpoint_every",
            "rollout.generate_timeout_s", "description"} <= named


@pytest.mark.parametrize("stage,path,value", [
    ("chat", ("train", "lr"), 0.001), ("chat", ("train", "steps"), 9), ("tokens", ("seq_len",), 64),
    ("rm", ("train", "seed"), 7),
])
def test_result_fields_change_the_stage_and_its_dependents_only(tmp_path, stage, path, value):
    raw = _tiny_raw(tmp_path)
    base = _fps(raw)
    new = copy.deepcopy(raw)
    _set(new["stages"][stage], path, value)
    fps = _fps(new)
    pipe = parse_pipeline(copy.deepcopy(raw))
    expect = {s for s in pipe.stages if stage in ancestors(pipe, [s])}  # it and what reads from it
    assert stage in expect and len(expect) < len(pipe.stages)
    assert {s for s in base if fps[s] != base[s]} == expect


def test_execution_only_marker_is_the_one_in_config():
    assert EXECUTION_ONLY == {"fingerprint": False}


# ---------------------------------------------------------------- external inputs


def _byo_raw(tmp_path: Path, data: str, tok_from: str, reward_fn_module: str | None = None) -> dict:
    stages = {
        "bpe": {"kind": "tokenizer", "from": tok_from},
        "chat": {"kind": "sft", "from": tok_from, "data": data},
        "prefs": {"kind": "dpo", "init": "chat"},
        "other": {"kind": "curate", "sources": [{"type": "python-docs"}]},
    }
    if reward_fn_module:
        stages["other"]["sources"] = [{"type": "jsonl", "path": reward_fn_module}]
    return {"name": "byo", "workdir": str(tmp_path / "runs"), "stages": stages}


@pytest.fixture
def byo(tmp_path, tiny_causal_dir):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(4)]
    (data / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, tiny_causal_dir


def test_editing_a_data_file_in_place_reruns_exactly_its_readers(tmp_path, byo):
    data, model = byo
    raw = _byo_raw(tmp_path, str(data / "chat.jsonl"), str(model))
    base = _fps(raw)
    f = data / "chat.jsonl"
    # A touch (new mtime, same bytes) changes nothing ...
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert _fps(raw) == base
    # ... an edit of the content reruns the sft stage and the dpo stage that reads it, nothing else.
    f.write_text(f.read_text().replace("a3", "a3 edited"))
    after = _fps(raw)
    assert {s for s in base if after[s] != base[s]} == {"chat", "prefs"}


def test_a_folder_input_counts_every_file_and_a_glob_its_matches(tmp_path, byo):
    data, model = byo
    as_folder, as_glob = _byo_raw(tmp_path, str(data), str(model)), _byo_raw(tmp_path, str(data / "*.jsonl"), str(model))
    folder_fp, glob_fp = _fps(as_folder)["chat"], _fps(as_glob)["chat"]
    (data / "notes.txt").write_text("not matched by the glob")
    assert _fps(as_folder)["chat"] != folder_fp
    assert _fps(as_glob)["chat"] == glob_fp
    (data / "more.jsonl").write_text('{"prompt": "x", "completion": "y"}\n')
    assert _fps(as_glob)["chat"] != glob_fp


def test_editing_a_from_model_folder_reruns_every_stage_that_reads_it(tmp_path, byo):
    data, model = byo
    import shutil

    local = tmp_path / "model"
    shutil.copytree(model, local)
    raw = _byo_raw(tmp_path, str(data / "chat.jsonl"), str(local))
    base = _fps(raw)
    cfg = json.loads((local / "generation_config.json").read_text()) if (local / "generation_config.json").exists() \
        else {}
    (local / "generation_config.json").write_text(json.dumps({**cfg, "temperature": 0.5}))
    after = _fps(raw)
    assert {s for s in base if after[s] != base[s]} == {"bpe", "chat", "prefs"}


def test_digests_are_cached_by_size_and_mtime_in_the_run_directory(tmp_path, byo):
    data, model = byo
    raw = _byo_raw(tmp_path, str(data / "chat.jsonl"), str(model))
    pipe = parse_pipeline(copy.deepcopy(raw))
    fingerprints(pipe)
    cache = json.loads((run_dir(pipe) / CACHE_FILE).read_text())
    key = str((data / "chat.jsonl").resolve())
    assert cache[key][:2] == [(data / "chat.jsonl").stat().st_size, (data / "chat.jsonl").stat().st_mtime_ns]
    # A cached entry is trusted while size and mtime match: that is what keeps large models cheap.
    digests = InputDigests(run_dir(pipe) / CACHE_FILE)
    assert digests._file_digest(data / "chat.jsonl") == cache[key][2]
    assert not digests.dirty


def test_external_inputs_are_found_in_nested_blocks(tmp_path, byo):
    data, model = byo
    raw = _byo_raw(tmp_path, str(data / "chat.jsonl"), str(model), reward_fn_module=str(data / "*.jsonl"))
    pipe = parse_pipeline(copy.deepcopy(raw))
    assert ("sources.0.path.0", str(data / "*.jsonl")) in external_inputs(pipe.stages["other"])
    assert ("from_", str(model)) in external_inputs(pipe.stages["chat"])
    assert ("data", str(data / "chat.jsonl")) in external_inputs(pipe.stages["chat"])


def test_a_module_function_reference_counts_by_its_source(tmp_path, monkeypatch):
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "myreward.py").write_text("def score(prompt, completion, **kw):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(pkg))
    digests = InputDigests(None)
    first = digests.digest("myreward:score")
    (pkg / "myreward.py").write_text("def score(prompt, completion, **kw):\n    return 0.0\n")
    assert InputDigests(None).digest("myreward:score") != first
    assert digests.digest("builtin:instruct") == "builtin"


def test_a_reward_function_in_a_weighted_list_reruns_the_rl_stage_when_its_module_changes(
        tmp_path, monkeypatch, tiny_causal_dir):
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "listreward.py").write_text("def score(prompt, completion, **kw):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(pkg))
    raw = {"name": "rl", "workdir": str(tmp_path / "runs"), "stages": {
        "rm": {"kind": "reward", "from": str(tiny_causal_dir)},
        "rl": {"kind": "grpo", "from": str(tiny_causal_dir), "prompts": "builtin:arithmetic",
               "reward": [{"stage": "rm", "weight": 0.5}, {"function": "listreward:score", "weight": 1.0}]}}}
    pipe = parse_pipeline(copy.deepcopy(raw))
    found = dict(external_inputs(pipe.stages["rl"]))
    assert found["reward.1.function"] == "listreward:score"
    assert "rm" not in found.values()  # a stage name is an input stage, not a file
    base = _fps(raw)
    (pkg / "listreward.py").write_text("def score(prompt, completion, **kw):\n    return 0.0\n")
    after = _fps(raw)
    assert {s for s in base if after[s] != base[s]} == {"rl"}
