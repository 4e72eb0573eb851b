"""Validators for the non-pipeline YAML files the repo ships (Serve configs, cluster files).

`check_yaml_file(path, docs)` recognises a file by its content, checks it against what
its consumer (Ray Serve, the Ray cluster launcher, KubeRay) requires, and returns its
kind; a wrong file raises ValueError naming the file and the field.
"""

from __future__ import annotations

import importlib
from pathlib import Path


def _require(path: Path, obj: dict, keys: list[str], where: str = "") -> None:
    for k in keys:
        if k not in obj:
            raise ValueError(f"{path}: missing {where}{k}")


def check_serve_config(path: Path, doc: dict) -> None:
    """A `serve run`/`serve deploy` config: applications with an import path that resolves."""
    _require(path, doc, ["applications"])
    for i, app in enumerate(doc["applications"]):
        _require(path, app, ["name", "import_path"], f"applications.{i}.")
        module, _, attr = app["import_path"].replace(":", ".").rpartition(".")
        mod = importlib.import_module(module)
        if not callable(getattr(mod, attr, None)):
            raise ValueError(f"{path}: applications.{i}.import_path {app['import_path']!r} is not callable")
        host = doc.get("http_options", {}).get("host", "127.0.0.1")
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"{path}: http_options.host {host!r}: ship loopback; users opt into wider binds")


def check_cluster_launcher(path: Path, doc: dict) -> None:
    _require(path, doc, ["cluster_name", "provider", "available_node_types", "head_node_type"])
    if doc["head_node_type"] not in doc["available_node_types"]:
        raise ValueError(f"{path}: head_node_type {doc['head_node_type']!r} is not in available_node_types")
    for name, node in doc["available_node_types"].items():
        _require(path, node, ["resources", "node_config"], f"available_node_types.{name}.")


def check_kuberay(path: Path, doc: dict) -> None:
    _require(path, doc, ["apiVersion", "kind", "metadata", "spec"])
    if not doc["apiVersion"].startswith("ray.io/"):
        raise ValueError(f"{path}: apiVersion {doc['apiVersion']!r} is not a KubeRay API")
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec
    _require(path, cluster, ["headGroupSpec"], "spec.")
    if doc["kind"] == "RayJob":
        _require(path, spec, ["entrypoint"], "spec.")
        if not any(c in spec["entrypoint"] for c in ("llmray run ", "llmray.cli run ")):
            raise ValueError(f"{path}: spec.entrypoint should run `llmray run <pipeline>`")
        check_pipeline_reference(path, spec["entrypoint"], "spec.entrypoint")


def _repo_root(path: Path) -> Path:
    for parent in path.resolve().parents:
        if (parent / "pyproject.toml").exists():
            return parent
    return path.resolve().parent


def check_pipeline_reference(path: Path, command: str, where: str) -> None:
    """The pipeline file a shipped `llmray run <file>` command names exists in the repo and validates
    (with the command's own dotted overrides), so a cluster file never points at a missing pipeline."""
    import shlex

    from llmray.config import ConfigError
    from llmray.pipeline import load_pipeline

    argv = shlex.split(command)
    i = argv.index("run") + 1 if "run" in argv else len(argv)
    if i >= len(argv):
        raise ValueError(f"{path}: {where}: `llmray run` names no pipeline file")
    target = _repo_root(path) / argv[i]
    if not target.exists():
        raise ValueError(f"{path}: {where} runs {argv[i]!r}, which the repo does not ship")
    overrides = [a for a in argv[i + 1:] if "=" in a and not a.startswith("-")]
    try:
        load_pipeline(target, overrides)
    except ConfigError as e:
        raise ValueError(f"{path}: {where} runs {argv[i]!r}, which does not validate:\n{e}") from None


def check_yaml_file(path: Path, docs: list) -> str:
    """Validate a shipped non-pipeline YAML file; returns its kind or 'unknown'."""
    kinds = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a mapping, got {type(doc).__name__}")
        if "applications" in doc:
            check_serve_config(path, doc)
            kinds.append("serve")
        elif "available_node_types" in doc or "cluster_name" in doc:
            check_cluster_launcher(path, doc)
            kinds.append("cluster-launcher")
        elif str(doc.get("apiVersion", "")).startswith("ray.io/") or doc.get("kind") in ("RayCluster", "RayJob"):
            check_kuberay(path, doc)
            kinds.append("kuberay")
        else:
            kinds.append("unknown")
    return "unknown" if "unknown" in kinds else kinds[0]
