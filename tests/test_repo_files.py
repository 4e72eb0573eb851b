"""Every YAML the repo ships is valid; the README's reference and examples stay true."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "runs", ".git", ".pytest_cache", "node_modules", "build"}


def repo_yaml_files() -> list[Path]:
    out = []
    for p in sorted(ROOT.rglob("*.y*ml")):
        if p.suffix in (".yaml", ".yml") and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts):
            out.append(p)
    return out


def test_the_repo_ships_yaml_files():
    names = {p.relative_to(ROOT).as_posix() for p in repo_yaml_files()}
    assert "pipeline.yaml" in names


@pytest.mark.parametrize("path", repo_yaml_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_yaml_validates(path):
    from llmray.config import load_pipeline
    from llmray.yaml_checks import check_yaml_file

    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(d is not None for d in docs), f"{path} is empty"
    if isinstance(docs[0], dict) and "stages" in docs[0]:
        pipe = load_pipeline(path)  # raises ConfigError naming the field on any problem
        assert pipe.stages
    else:
        kind = check_yaml_file(path, docs)  # raises with the reason when the file is wrong
        assert kind != "unknown", f"{path}: no validator knows this YAML file; add one to llmray/yaml_checks.py"


def test_readme_reference_is_generated_from_the_schema():
    from llmray.schema_doc import BEGIN, END, reference_markdown

    text = (ROOT / "README.md").read_text()
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert body.strip() == reference_markdown().strip(), "run `python -m llmray.schema_doc` to refresh README.md"


def readme_commands() -> list[str]:
    """Commands in the README's ```console blocks (lines starting with `$ llmray`) that change nothing."""
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ llmray ") and line.split()[2] in ("validate", "plan", "schema", "status"):
                cmds.append(line[2:])
    return cmds


def test_readme_has_runnable_examples():
    assert len(readme_commands()) >= 3


@pytest.mark.parametrize("cmd", readme_commands())
def test_readme_examples_run(cmd, tmp_path):
    argv = shlex.split(cmd)
    argv = [sys.executable, "-m", "llmray.cli", *argv[1:], f"workdir={tmp_path}"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_lint_is_clean():
    """`make lint` (ruff with pyproject's rule set) passes on everything the repo ships."""
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run([str(ruff), "check", "llmray", "tests", "bench"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
