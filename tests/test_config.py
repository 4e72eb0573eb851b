"""Config validation: schema errors, stage references, cycles, overrides, CLI exit codes."""

from __future__ import annotations

import sys

import pytest
import yaml
from cli import llmray

from llmray.cli import main
from llmray.config import ConfigError
from llmray.pipeline import apply_overrides, parse_pipeline
from llmray.stages import STAGES


@pytest.fixture(autouse=True)
def probe_kind(monkeypatch):
    monkeypatch.setitem(STAGES, "probe", "probe_stage")


GOOD = """\
name: demo
workdir: {workdir}
stages:
  a:
    kind: probe
    n: 3
  b:
    kind: probe
    data: [a]
"""


def _write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text.format(workdir=tmp_path / "runs"))
    return p


def _errors(tmp_path, text, capsys, *overrides):
    code = main(["validate", str(_write(tmp_path, text)), *overrides])
    return code, capsys.readouterr().err


def test_good_file_validates(tmp_path, capsys):
    code = main(["validate", str(_write(tmp_path, GOOD))])
    assert code == 0
    assert "2 stages" in capsys.readouterr().out


@pytest.mark.parametrize(
    "edit, expect",
    [
        (GOOD.replace("    n: 3", "    n: 3\n    bogus: 1"), ["p.yaml:7", "stages.a.bogus", "Extra inputs"]),
        (GOOD.replace("n: 3", "n: three"), ["p.yaml:6", "stages.a.n", "valid integer", "'three'"]),
        (GOOD.replace("data: [a]", "data: [zz]"), ["stages.b.data", "no stage named 'zz'"]),
        (GOOD.replace("    n: 3", "    n: 3\n    data: [b]"), ["cycle", "a -> b -> a"]),
        (GOOD.replace("kind: probe\n    n: 3", "kind: nope"), ["stages.a.kind", "unknown stage kind"]),
        (GOOD.replace("name: demo", "name: 'bad name'"), ["name", "should match pattern"]),
        ("name: x\nstages: [1, 2\n", ["invalid YAML"]),
        ("- just\n- a list\n", ["must be a YAML mapping"]),
    ],
)
def test_config_errors_exit_2_and_name_the_field(tmp_path, capsys, edit, expect):
    code, err = _errors(tmp_path, edit, capsys)
    assert code == 2
    for piece in expect:
        assert piece in err
    assert "Traceback" not in err


def test_wrong_kind_of_input_is_refused(tmp_path, monkeypatch):
    from typing import Literal

    import probe_stage
    from pydantic import Field

    from llmray.config import StageConfig

    class Other(StageConfig):
        INPUTS = {"data": ("other",)}
        kind: Literal["other"] = Field("other", description="k")
        data: str | None = Field(None, description="d")

    mod = type(sys)("other_stage")
    mod.Config, mod.VERSION, mod.run = Other, "1", probe_stage.run
    monkeypatch.setitem(sys.modules, "other_stage", mod)
    monkeypatch.setitem(STAGES, "other", "other_stage")
    raw = {"name": "x", "stages": {"a": {"kind": "probe"}, "b": {"kind": "other", "data": "a"}}}
    with pytest.raises(ConfigError) as e:
        parse_pipeline(raw)
    assert "stages.b.data" in str(e.value) and "'a' is a probe stage" in str(e.value)


def test_overrides_apply_before_validation(tmp_path, capsys):
    code, err = _errors(tmp_path, GOOD.replace("n: 3", "n: three"), capsys, "stages.a.n=4")
    assert code == 0, err
    code, err = _errors(tmp_path, GOOD, capsys, "stages.a.n=[1]")
    assert code == 2 and "stages.a.n" in err
    raw = apply_overrides({"a": {"b": 1}}, ["a.c.d=x", "a.b=2.5", "e=true"])
    assert raw == {"a": {"b": 2.5, "c": {"d": "x"}}, "e": True}
    with pytest.raises(ConfigError, match="a.b is not a mapping"):
        apply_overrides({"a": {"b": 1}}, ["a.b.c=1"])
    with pytest.raises(ConfigError, match="dotted.path=value"):
        apply_overrides({}, ["nonsense"])


def test_cli_config_error_is_exit_2_without_traceback(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "stages": {"a": {"kind": "nope"}}}))
    proc = llmray("validate", p)
    assert proc.returncode == 2
    assert "stages.a.kind" in proc.stderr and "Traceback" not in proc.stderr
