"""Code repositories in the curate stage: licence detection (SPDX by text), the licence allow list and
The Stack-style file rules, on Git repositories, a plain folder and archives made by the test
(`llmray.testing.write_repos`). Unit tests read without Ray; the Ray run is marked slow."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from llmray.curate.config import CleanConfig, CodeFilterConfig, LicenseConfig
from llmray.testing import APACHE_HEAD, CODE_FILE_RULES, GPL3_HEAD, MIT_TEXT, write_repos


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    return root, write_repos(root)


def _read(uri: str, license=None, code_filter=None) -> list[dict]:
    from llmray.curate.readers import read_task

    task = {"source_idx": 0, "source": "code", "type": "repo", "text_field": "text", "id_field": None,
            "limit": None, "task_idx": 0, "files": [(uri, Path(uri).name)],
            "license": license, "code_filter": code_filter}
    rows = []
    for b in read_task(task, CleanConfig(), True, 64):
        rows.extend({k: b[k][i] for k in b} for i in range(len(b["id"])))
    return rows


def test_license_texts_map_to_spdx_ids():
    from llmray.curate.licenses import allowed, combine, detect, is_license_file

    assert detect(MIT_TEXT) == "MIT" and detect(APACHE_HEAD) == "Apache-2.0" and detect(GPL3_HEAD) == "GPL-3.0"
    assert detect("# SPDX-License-Identifier: BSD-3-Clause\n") == "BSD-3-Clause"
    assert detect("All rights reserved. Do not copy.") is None
    assert combine({"LICENSE-MIT": "MIT", "LICENSE-APACHE": "Apache-2.0"}) == "Apache-2.0 OR MIT"
    assert allowed("Apache-2.0 OR GPL-3.0", ["Apache-2.0"], False) and not allowed(None, ["MIT"], False)
    assert all(map(is_license_file, ["LICENSE", "LICENCE.md", "COPYING", "LICENSE-MIT", "license.txt"]))
    assert not is_license_file("licenses.py")
    common = Path("/usr/share/common-licenses")  # full official texts, where the system ships them
    expected = {"Apache-2.0": "Apache-2.0", "GPL-2": "GPL-2.0", "GPL-3": "GPL-3.0", "LGPL-2.1": "LGPL-2.1",
                "LGPL-3": "LGPL-3.0", "MPL-2.0": "MPL-2.0", "CC0-1.0": "CC0-1.0", "BSD": "BSD-3-Clause"}
    for name, spdx in expected.items():
        if (common / name).is_file():
            assert detect((common / name).read_text(errors="replace")) == spdx, name


def test_every_repository_licence_is_detected(repos):
    from llmray.curate.repos import expand_repos, repo_license, top_folder

    root, expected = repos
    found = {name: repo_license(uri, top_folder(uri))[0] for uri, name in expand_repos([str(root / "*")])}
    assert found == expected


def test_survey_reads_an_archive_once_for_top_and_licence(repos, monkeypatch):
    """`survey` gives what top_folder + repo_license give, in one pass: a tar stream is read twice per
    repository (survey, then the files), not three times."""
    from llmray.curate import repos as R

    root, _ = repos
    uris = [uri for uri, _ in R.expand_repos([str(root / "*")])]
    assert any(u.endswith(".tar.gz") for u in uris) and any(u.endswith(".zip") for u in uris)
    for uri in uris:
        top = R.top_folder(uri)
        assert R.survey(uri) == (top, *R.repo_license(uri, top)), uri
    opened = []
    entries = R._entries
    monkeypatch.setattr(R, "_entries", lambda uri: opened.append(uri) or entries(uri))
    tar = next(u for u in uris if u.endswith(".tar.gz"))
    assert _read(tar) and opened == [tar, tar]


def test_file_rules_and_licence_allow_list(repos):
    root, expected = repos
    lic, code = LicenseConfig().model_dump(), CodeFilterConfig().model_dump()
    for name in ("mit", "apache-archive.zip", "mit-archive.tar.gz"):
        rows = _read(str(root / name), lic, code)
        metas = {json.loads(r["meta"])["path"]: (r, json.loads(r["meta"])) for r in rows}
        assert "untracked.py" not in metas  # a Git work tree contributes the files `git ls-files` lists
        for path, rule in CODE_FILE_RULES.items():
            r, meta = metas[path]
            assert meta["license"] in ("MIT", "Apache-2.0") and meta["repo"] == name.split(".")[0]
            if rule is None:
                assert r["_drop"] == "", (name, path, r["_why"])
            else:
                assert r["_drop"] == "code_filter" and r["_why"].startswith(rule + ":"), (name, path, r["_why"])
        kept = metas["src/wrap.py"]
        assert kept[1]["language"] == "Python" and kept[1]["size"] == len(kept[0]["text"].encode())
        assert kept[0]["id"] == f"code/{name.split('.')[0]}/src/wrap.py"
    via_uri = _read(f"file://{root}/mit-archive.tar.gz", lic, code)  # object stores: archives through pyarrow.fs
    assert sum(r["_drop"] == "" for r in via_uri) == 2
    for name in ("gpl3", "nolicense"):  # not on the allow list: every file removed by `license`
        rows = _read(str(root / name), lic, code)
        assert rows and {r["_drop"] for r in rows} == {"license"}
        assert rows[0]["_why"] == f"not_allowed: {expected[name] or 'unknown'}"
    gpl_ok = _read(str(root / "gpl3"), {**lic, "allow": ["GPL-3.0"]}, code)
    assert Counter(r["_drop"] for r in gpl_ok)[""] == 2


def test_code_rules_thresholds():
    from llmray.curate.repos import content_reason, language_of, path_reason

    cfg = CodeFilterConfig().model_dump()
    assert language_of("a/b/Main.java") == "Java" and language_of("Makefile") == "Makefile"
    assert path_reason("pkg/vendor/x.go", 10, cfg).startswith("vendored")
    assert path_reason("big.py", 2_000_000, cfg).startswith("too_large")
    assert path_reason("x.py", 10, {**cfg, "languages": ["Go"]}).startswith("language")
    assert content_reason(b"x = 1\n" + b"y" * 1001 + b"\n", cfg)[0].startswith("long_lines")
    assert content_reason(b"#" * 50 + b"\n" + b"= - + * /\n" * 5, cfg)[0].startswith("alnum_fraction")
    assert content_reason(b"\xff\xfe\x00a", cfg)[0].startswith("binary")
    assert content_reason(b"def f():\n    return 1\n", cfg) == (None, "def f():\n    return 1\n")


@pytest.mark.slow
def test_repo_source_through_the_stage(ray_local, repos, tmp_path):
    """The Ray Data run: the funnel names license and code_filter, accounting holds, kept files carry meta."""
    import pyarrow.parquet as pq

    from llmray.pipeline import parse_pipeline
    from llmray.runner import run_pipeline

    root, _ = repos
    stage = {"kind": "curate", "sources": [{"type": "repo", "name": "code", "path": str(root / "*")}],
             # dedup off too: every test repository holds the same files, so only the first would survive
             **{op: {"enabled": False} for op in ("gopher_quality", "gopher_repetition", "fineweb", "quality",
                                                   "boilerplate", "exact_dedup", "near_dedup")}}
    run_pipeline(parse_pipeline({"name": "c", "workdir": str(tmp_path / "runs"), "stages": {"corpus": stage}}),
                 echo=lambda *_: None)
    out = tmp_path / "runs" / "c" / "corpus"
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    assert [f["op"] for f in m["funnel"]][:3] == ["license", "code_filter", "clean"]
    assert m["docs_in"] == m["docs_out"] + sum(m["removed"].values()) + m["quarantined"]
    n_files = len(CODE_FILE_RULES)
    assert m["removed"]["license"] == 2 * n_files + 1  # gpl3 (with its COPYING) and nolicense
    assert {"vendored", "generated", "minified", "binary", "unknown_extension"} <= set(m["reasons"]["code_filter"])
    data = pq.read_table(out / "data").to_pylist()
    metas = [json.loads(r["meta"]) for r in data]
    assert {mm["license"] for mm in metas} == {"MIT", "Apache-2.0"}
    assert {mm["path"] for mm in metas} == {"src/wrap.py", "README.md"} and len(data) == 4 * 2
    assert os.path.basename(str(root)) not in {mm["repo"] for mm in metas}
