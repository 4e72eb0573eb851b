"""Keeps scikit-learn out of every llmray process that imports a `transformers` model class.

transformers' generation package imports `sklearn.metrics.roc_curve` whenever scikit-learn is
installed (`generation/candidate_generator.py`: the adaptive draft-confidence threshold of assisted
generation), and scikit-learn brings `scipy.stats` and pandas with it: 1.5-2.5 s of the start of each
process that loads a model (Ray Train workers, Serve replicas, RL roles, evaluation tasks) on 2 cores
(bench/README.md "Fixed costs"). llmray never uses assisted generation; scikit-learn is installed for
lm-eval's and MLflow's metrics, so it cannot simply be left out of the environment.

`install()` (run by `llmray/__init__.py`, so in every process that runs llmray code before it imports a
model class) puts a finder on `sys.meta_path` that only wraps the loading of that one module: while it
executes, `transformers.utils.is_sklearn_available` answers False, as in an environment without
scikit-learn, where transformers keeps the threshold adaptation off. Every other module, lm-eval and
transformers' own checks included, sees scikit-learn as it is. If transformers changes (no such module
or no such function), the finder does nothing. `LLMRAY_TRANSFORMERS_SKLEARN=1` turns it off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "transformers.generation.candidate_generator"


def _no_sklearn() -> bool:
    return False


class _Loader(importlib.abc.Loader):
    """The module's own loader, executing it with `is_sklearn_available` answering False."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The swap lasts only while this module's top level runs (under its import lock); the module keeps
        # the stand-in it bound by `from ..utils import is_sklearn_available`, so its later checks agree.
        utils = sys.modules.get("transformers.utils")
        real = getattr(utils, "is_sklearn_available", None)
        if real is None:
            self.loader.exec_module(module)
            return
        utils.is_sklearn_available = _no_sklearn
        try:
            self.loader.exec_module(module)
        finally:
            utils.is_sklearn_available = real

    def __getattr__(self, name):  # get_source, get_code, ...: tracebacks and inspect read the file as usual
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Idempotent; a no-op when LLMRAY_TRANSFORMERS_SKLEARN=1 or the module is already imported."""
    if os.environ.get("LLMRAY_TRANSFORMERS_SKLEARN") == "1" or TARGET in sys.modules:
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
