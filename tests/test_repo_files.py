"""Every YAML the repo ships is valid; the README stays a front page whose links resolve; lint is clean."""

from __future__ import annotations

import re
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


def _example_sandbox(path: Path, tmp_path: Path, monkeypatch) -> None:
    """An example pipeline reads offline stand-ins from `examples/<name>/` (made by `python -m llmray.testing
    <name> examples/<name>`, not committed): make them in a scratch copy of examples/ and work there."""
    import shutil

    from llmray.testing import write_byo_assets, write_rlvr_assets, write_web_assets

    makers = {"bring-your-own.yaml": ("byo", write_byo_assets), "rlvr-arithmetic.yaml": ("rlvr", write_rlvr_assets),
              "web.yaml": ("web", write_web_assets)}
    assert path.name in makers, f"{path}: say which stand-ins this example needs"
    folder, make = makers[path.name]
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("byo", "rlvr", "web"))
    make(tmp_path / "examples" / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # `examples.byo_rewards:...` reward functions import from here


@pytest.mark.parametrize("path", repo_yaml_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_yaml_validates(path, tmp_path, monkeypatch):
    from llmray.pipeline import load_pipeline
    from llmray.yaml_checks import check_yaml_file

    if path.parent == ROOT / "examples":
        _example_sandbox(path, tmp_path, monkeypatch)

    if path.parent == ROOT / "llmray" / "eval" / "tasks":  # lm-eval task YAMLs (`!function` tags): its loader
        from llmray.eval.harness import yaml_task_names

        assert yaml_task_names(path, "built-in task") == [path.stem]
        return
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(d is not None for d in docs), f"{path} is empty"
    if path == ROOT / "mkdocs.yml":  # the docs site's config: MkDocs validates it (theme, hooks, extensions)
        from mkdocs.config import load_config

        cfg = load_config(str(path))
        assert Path(cfg["docs_dir"]) == ROOT / "docs" and cfg["strict"]
    elif isinstance(docs[0], dict) and "stages" in docs[0]:
        pipe = load_pipeline(path)  # raises ConfigError naming the field on any problem
        assert pipe.stages
    else:
        kind = check_yaml_file(path, docs)  # raises with the reason when the file is wrong
        assert kind != "unknown", f"{path}: no validator knows this YAML file; add one to llmray/yaml_checks.py"


def test_readme_is_the_front_page_not_the_manual():
    """README: what llmray is, the two commands, the cluster path, a tour, links; the manual is docs/.
    (Its examples are validated and run by tests/test_docs.py, with those of docs/.)"""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for fact in ("make quickstart", "make test", "ray job submit --working-dir . -- llmray run pipeline.yaml",
                 "llmray plan", "llmray status", "llmray report", "llmray serve", "from openai import OpenAI"):
        assert fact in text, fact
    links = re.findall(r"\]\(((?:docs|bench)/[^)#]+)", text)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), f"README links to a missing file: {link}"


def test_lint_is_clean():
    """`make lint` (ruff with pyproject's rule set) passes on everything the repo ships."""
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run([str(ruff), "check", "llmray", "tests", "bench"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
