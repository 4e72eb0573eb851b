"""Placement from the pipeline file: data stages' `placement:` labels, the workdir rule (a local path or a
URI pyarrow.fs opens), cluster files pointing at pipelines that exist. No Ray needed except the
DataContext the label scope sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pipe(**over):
    from llmray.pipeline import parse_pipeline

    raw = yaml.safe_load((ROOT / "tests" / "support" / "pipelines" / "tiny.yaml").read_text())
    return parse_pipeline(raw, "tiny.yaml", overrides=[f"{k}={v}" for k, v in over.items()])


def test_workdir_uris_pyarrow_opens_are_accepted_others_refused_naming_the_field():
    from llmray.config import ConfigError

    # Opened by pyarrow.fs (checked offline: no region lookup, no connection).
    for uri in ("s3://bucket/runs", "gs://bucket/runs", "file:///tmp/llmray-runs",
                "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"):
        assert _pipe(workdir=uri).workdir == uri
    assert _pipe(workdir="/mnt/shared/runs").workdir == "/mnt/shared/runs"
    for uri, why in (("ftp://host/runs", "unsupported URI scheme"), ("s3:///runs", "names no bucket"),
                     ("s3://bucket/runs?endpoint=x", "pyarrow.fs cannot open")):
        with pytest.raises(ConfigError) as e:
            _pipe(workdir=uri)
        assert e.value.items[0][0] == "workdir" and e.value.items[0][2] == uri, e.value.items
        assert why in e.value.items[0][1], e.value.items
    with pytest.raises(ConfigError) as e:
        _pipe(workdir="s3://bucket/runs", mirror_dir="s3://bucket/mirror")
    assert e.value.items[0][0] == "mirror_dir"


def test_placement_validates_and_does_not_change_fingerprints():
    from llmray.runner import fingerprints

    plain = _pipe()
    placed = _pipe(**{"stages.corpus.placement": "{labels: {node-group: cpu}}",
                      "stages.tokens.placement": "{labels: {node-group: cpu}}"})
    assert placed.stages["corpus"].placement.labels == {"node-group": "cpu"}
    assert fingerprints(plain) == fingerprints(placed)
    changed = _pipe(**{"stages.tokens.seq_len": 64})
    assert fingerprints(changed)["tokens"] != fingerprints(plain)["tokens"]  # the rest still counts


def test_placement_rejects_non_string_labels_and_unknown_keys():
    from llmray.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _pipe(**{"stages.corpus.placement": "{labels: {gpu: [1]}}"})
    assert e.value.items[0][0].startswith("stages.corpus.placement.labels")
    with pytest.raises(ConfigError) as e:
        _pipe(**{"stages.corpus.placement": "{custom: {cpu_node: 1}}"})
    assert e.value.items[0][0] == "stages.corpus.placement.custom"


def test_data_placement_scopes_the_ray_data_label_selector():
    from ray.data import DataContext

    from llmray.resources import DataPlacement, data_placement

    opts = DataContext.get_current().execution_options
    before = opts.label_selector
    with data_placement(DataPlacement(labels={"node-group": "cpu"})):
        assert DataContext.get_current().execution_options.label_selector == {"node-group": "cpu"}
        # A Dataset's own context is a copy taken when it is built: it carries the selector.
        assert DataContext.get_current().copy().execution_options.label_selector == {"node-group": "cpu"}
    assert opts.label_selector == before
    with data_placement(DataPlacement()):
        assert opts.label_selector == before


def test_cluster_pipeline_is_cluster_sized():
    from llmray.pipeline import load_pipeline

    pipe = load_pipeline(ROOT / "cluster" / "pipeline-1b.yaml")
    base = pipe.stages["base"]
    assert base.model.preset == "1b" and base.resources.num_workers == 8 and base.resources.use_gpu
    assert base.resources.strategy == "fsdp2"
    assert pipe.workdir.startswith("/mnt/shared/")
    data_stages = [s for s in pipe.stages.values() if s.kind in ("curate", "tokenizer", "tokenize")]
    assert data_stages and all(s.placement.labels == {"node-group": "cpu"} for s in data_stages)
    # The labels and resources the pipeline selects on are what the cluster files give the nodes.
    launcher = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    types = launcher["available_node_types"].values()
    assert any(t.get("labels") == {"node-group": "cpu"} for t in types)
    assert all("gpu_node" in t["resources"] for t in types if t.get("labels") == {"node-group": "gpu"})


def test_a_rayjob_naming_a_missing_pipeline_is_refused(tmp_path):
    from llmray.yaml_checks import check_yaml_file

    (tmp_path / "pyproject.toml").write_text("")
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    doc["spec"]["entrypoint"] = "llmray run cluster/nope.yaml"
    with pytest.raises(ValueError, match="does not ship"):
        check_yaml_file(tmp_path / "job.yaml", [doc])
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "nope.yaml").write_text("name: x\nstages: {}\n")
    with pytest.raises(ValueError, match="does not validate"):
        check_yaml_file(tmp_path / "job.yaml", [doc])
