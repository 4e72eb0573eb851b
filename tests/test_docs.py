"""Every example in README.md and docs/ is validated or run; the generated reference stays true.

Convention (one rule, so nobody adds an unchecked example): a fenced block's language says what it
is, and YAML and Python blocks carry a marker comment on the line before them:

  <!-- check: pipeline -->           ```yaml: a whole pipeline file -> llmray.pipeline.parse_pipeline
  <!-- check: stages -->             ```yaml: stage blocks (name -> config), added to pipeline.yaml's
                                     stages (a same-named stage is replaced), then the whole file parsed
  <!-- check: serve -->              ```yaml: a top-level `serve:` section, in place of pipeline.yaml's
  <!-- check: python-run -->         ```python: executed (a block opening `# <name>.py` is also the
                                     file of that name in the sandbox, e.g. a reward module)
  <!-- check: python-compile (why) -->  ```python: compiled only; the reason says what it needs (a server)

```bash / ```shell / ```console blocks: each command is either run (`llmray validate|plan|schema|status`,
with `workdir=<tmp>` added) or matches an entry of NOT_RUN, which gives the reason it is not.
Blocks without a language are output / layouts and are not checked; other languages fail.

YAML and Python examples are checked in a sandbox directory holding what the guides' relative paths
name: tiny random model folders (`models/...`, built from transformers config classes, no download)
and small data files (`data/...`), since `llmray validate` checks that those exist and load.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!-- check: (?P<what>[\w-]+)(?: \((?P<why>.+)\))? -->")
RUN = ("validate", "plan", "schema", "status")  # read-only llmray commands, seconds each
NOT_RUN = {
    "make quickstart": "runs every stage of pipeline.yaml (minutes), then serves until Ctrl-C",
    "make test": "is this test suite",
    "llmray run": "trains models (minutes); tests/test_e2e.py and the stage tests run pipelines",
    "llmray serve": "serves until Ctrl-C; tests/test_serve_cli.py starts and stops servers",
    "llmray compare": "needs a running server (tests/test_serve_cli.py)",
    "llmray promote": "needs a running server (tests/test_serve_promote.py promotes on one)",
    "llmray rollback": "needs a running server (tests/test_serve_promote.py rolls back on one)",
    "llmray report": "needs a completed run (tests/test_report.py)",
    "ray job submit": "needs a Ray cluster (tests/test_job_submit.py submits to a local one)",
    "ray up": "starts AWS machines",
    "ray dashboard": "needs a launched cluster",
    "ray down": "needs a launched cluster",
    "serve run": "Ray Serve's CLI on a completed run (tests/test_serve_app.py builds the same app)",
    "serve deploy": "needs a running cluster",
    "kubectl": "needs a Kubernetes cluster",
    "mlflow ui": "serves until Ctrl-C; tests/test_tracking.py reads the same store with MlflowClient",
    "tensorboard --logdir": "needs the tensorboard package; tests/test_tracking.py reads the event files",
    "wandb sync": "uploads to the W&B server; tests/test_tracking.py checks the offline files",
    "lm_eval --model local-completions": "needs a running server (tests/test_eval_served.py runs the same "
                                         "evaluation against one it starts)",
    "LLMRAY_CPU_PROFILE=": "is this test suite, profiled (tests/test_cpu_profile.py checks the hook and report)",
    ".venv/bin/python tests/support/cpu_profile.py": "reads a whole suite's profile (tests/test_cpu_profile.py)",
    "python -m llmray.testing": "builds an example's stand-in inputs (a model folder, data); tests/test_byo_example.py "
                                "runs the same builder",
}
SHELL_LANGS = ("bash", "shell", "console", "sh")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    body: str
    marker: str | None
    why: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def doc_blocks() -> list[Block]:
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = [s for s in text[:m.start()].splitlines() if s.strip()]
            mark = MARKER.fullmatch(before[-1].strip()) if before else None
            out.append(Block(path, line, m["lang"], m["body"], mark["what"] if mark else None,
                             mark["why"] if mark else None))
    return out


BLOCKS = doc_blocks()


def blocks(*langs: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang in langs]


def test_docs_have_examples_of_every_sort():
    langs = {b.lang for b in BLOCKS}
    assert {"yaml", "bash", "python"} <= langs
    assert len(blocks("yaml")) >= 15


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_every_block_has_a_known_language_and_marker(block):
    if block.lang in ("yaml", "yml"):
        assert block.marker in ("pipeline", "stages", "serve"), \
            f"{block.id}: a YAML block needs <!-- check: pipeline|stages|serve --> on the line before it"
    elif block.lang == "python":
        assert block.marker in ("python-run", "python-compile"), \
            f"{block.id}: a Python block needs <!-- check: python-run --> or <!-- check: python-compile (why) -->"
        assert block.marker == "python-run" or block.why, f"{block.id}: say why it is only compiled"
    else:
        assert block.lang in ("", *SHELL_LANGS), f"{block.id}: no check knows ```{block.lang} blocks"


# ---------------------------------------------------------------- the sandbox


def _write_data(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir()
    convo = [{"from": "human", "value": "What does len do?"}, {"from": "gpt", "value": "It counts items."}]
    pq.write_table(pa.Table.from_pylist([{"id": "1", "conversations": convo}]), data / "chat.parquet")
    (data / "qa.jsonl").write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    (data / "math.jsonl").write_text(json.dumps({"prompt": "What is 2 + 3?", "reference": "5"}) + "\n")
    prefs = data / "prefs"  # the layout of `datasets.Dataset.save_to_disk`: state.json + arrow files
    prefs.mkdir()
    table = pa.Table.from_pylist([{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}])
    with pa.OSFile(str(prefs / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (prefs / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Path:
    """The folder YAML and Python examples are checked in (see the module docstring)."""
    from llmray.testing import tiny_family_dir

    root = tmp_path_factory.mktemp("docs-sandbox")
    tiny_family_dir(root / "models" / "qwen2-instruct", "qwen2")  # ChatML, stock template
    tiny_family_dir(root / "models" / "llama-3-instruct", "llama")
    _write_data(root)
    for b in blocks("python"):  # `# my_rewards.py` blocks are modules the YAML examples import
        first = b.body.splitlines()[0] if b.body.strip() else ""
        m = re.match(r"# ([\w]+\.py)\b", first)
        if m:
            (root / m[1]).write_text(b.body)
    return root


@pytest.fixture
def in_sandbox(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    monkeypatch.syspath_prepend(str(sandbox))
    return sandbox


# ---------------------------------------------------------------- YAML


def _quickstart() -> dict:
    return yaml.safe_load((ROOT / "pipeline.yaml").read_text())


@pytest.mark.parametrize("block", blocks("yaml", "yml"), ids=lambda b: b.id)
def test_yaml_examples_validate(block, in_sandbox):
    from llmray.pipeline import parse_pipeline

    snippet = yaml.safe_load(block.body)
    assert isinstance(snippet, dict) and snippet, f"{block.id}: empty YAML example"
    if block.marker == "pipeline":
        raw = snippet
    elif block.marker == "stages":
        assert "kind" not in snippet, f"{block.id}: a stages block maps stage names to configs"
        raw = copy.deepcopy(_quickstart())
        raw["stages"].update(snippet)
    else:
        assert set(snippet) == {"serve"}, f"{block.id}: a serve block holds only `serve:`"
        raw = copy.deepcopy(_quickstart()) | snippet
    pipe = parse_pipeline(raw, source=block.id)  # ConfigError names the field on any problem
    if block.marker == "stages":
        assert {name: cfg.kind for name, cfg in pipe.stages.items() if name in snippet} == \
            {name: cfg["kind"] for name, cfg in snippet.items()}


# ---------------------------------------------------------------- shell


def shell_commands() -> list[tuple[str, str]]:
    """(where, command) for every command line of every shell block (comments and `$ ` stripped)."""
    out = []
    for b in blocks(*SHELL_LANGS):
        for i, line in enumerate(b.body.replace("\\\n", " ").splitlines()):
            line = line.strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                out.append((f"{b.id}+{i + 1}", " ".join(shlex.split(line, comments=True))))
    return out


COMMANDS = shell_commands()


def _is_run(cmd: str) -> bool:
    argv = cmd.split()
    return argv[0] == "llmray" and len(argv) > 2 and argv[1] in RUN


def test_every_shell_command_is_run_or_excused():
    unknown = [f"{where}: {cmd}" for where, cmd in COMMANDS
               if not _is_run(cmd) and not any(cmd.startswith(p) for p in NOT_RUN)]
    assert not unknown, "run these (RUN) or say why not (NOT_RUN):\n" + "\n".join(unknown)
    unused = [p for p in NOT_RUN if not any(cmd.startswith(p) for _, cmd in COMMANDS)]
    assert not unused, f"NOT_RUN entries no example uses any more: {unused}"
    assert sum(_is_run(c) for _, c in COMMANDS) >= 6


@pytest.mark.parametrize("cmd", sorted({c for _, c in COMMANDS if _is_run(c)}))
def test_shell_examples_run(cmd, tmp_path):
    argv = [sys.executable, "-m", "llmray.cli", *shlex.split(cmd)[1:], f"workdir={tmp_path}"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


# ---------------------------------------------------------------- Python


@pytest.mark.parametrize("block", blocks("python"), ids=lambda b: b.id)
def test_python_examples(block, in_sandbox):
    code = compile(block.body, block.id, "exec")
    if block.marker == "python-run":
        exec(code, {"__name__": "__docs__"})  # noqa: S102 - our own docs' examples


# ---------------------------------------------------------------- the generated reference


def test_every_kind_has_a_page_with_its_reference():
    from llmray.schema_doc import kinds

    for what, page in [*((k, f"stages/{k}.md") for k in kinds()), ("serve", "serve.md"),
                       ("pipeline", "concepts.md")]:
        text = (ROOT / "docs" / page).read_text()
        assert f"<!-- reference: {what} -->" in text.splitlines(), f"docs/{page} lacks its reference marker"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert page.relative_to(ROOT / "docs").as_posix() in nav, f"{page} is not in mkdocs.yml's nav"


def _hook():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_names_fields_as_written_and_each_block_once():
    from llmray.schema_doc import kinds, reference
    from llmray.stages import load_stage_modules

    for kind, module in load_stage_modules().items():
        page = reference(kind)
        for name, field in module.Config.model_fields.items():
            assert f"| `{field.alias or name}` |" in page, (kind, name)
        assert "`from_`" not in page
        headings = [line for line in page.splitlines() if line.startswith("#")]
        assert len(headings) == len(set(headings)), f"{kind}: a block printed twice"
    assert _hook().expand("x\n<!-- reference: sft -->\ny").count("| `train` |") == 1
    with pytest.raises(KeyError):
        _hook().expand("<!-- reference: nosuchkind -->")
    assert "sft" in kinds()


def _table_default(page: str, block: str, field: str) -> str:
    table = page.split(f"`{block}`\n", 1)[1].split("\n#", 1)[0]
    row = next(r for r in table.splitlines() if r.startswith(f"| `{field}` |"))
    return row.split(" | ")[2].strip("`")


@pytest.mark.parametrize("kind", ["sft", "reward", "dpo"])
def test_reference_shows_a_kinds_train_defaults_as_they_resolve(kind):
    """The documented lr is the lr a stage gets, with no `train:` and with a partial one."""
    from llmray.schema_doc import reference
    from llmray.stages import get_stage

    config = get_stage(kind).Config
    documented = float(_table_default(reference(kind), "train", "lr"))
    for train in ({}, {"train": {"steps": 50}}):
        assert config.model_validate({"kind": kind, "init": "x", **train}).train.lr == documented


def test_docs_build_strict(tmp_path):
    """What `make docs` runs (CI runs it too): warnings, broken links and unknown markers fail."""
    pytest.importorskip("mkdocs")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    dpo = (tmp_path / "site" / "stages" / "dpo.html").read_text()
    assert "5e-06" in dpo and "<td><code>lr</code></td>" in dpo
