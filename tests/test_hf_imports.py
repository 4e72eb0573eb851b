"""`llmray.hf_imports`: a process that imports llmray loads transformers' model classes and generates
without importing scikit-learn, while scikit-learn stays importable for everything else (lm-eval's
metrics). Fresh interpreters (the switch acts at import time); no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import inspect, json, sys
import llmray
import torch
from transformers import LlamaConfig, LlamaForCausalLM
import transformers.generation.candidate_generator as cg
import transformers.utils as tu
loaded = "sklearn" in sys.modules
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2))
out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
from sklearn.metrics import f1_score
print(json.dumps({"sklearn_loaded": loaded, "module_sees": cg.is_sklearn_available(),
                  "transformers_sees": tu.is_sklearn_available(), "new_tokens": out.shape[1] - 3,
                  "f1": float(f1_score([1, 0, 1], [1, 0, 0])), "source": "roc_curve" in inspect.getsource(cg)}))
"""


def _probe(code: str, **env):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration  # two Python subprocesses loading transformers (~10 s): not in the fast tier
def test_model_classes_load_and_generate_without_scikit_learn_which_stays_usable():
    got = _probe(PROBE, LLMRAY_TRANSFORMERS_SKLEARN="0")
    assert got["sklearn_loaded"] is False
    assert got["module_sees"] is False and got["transformers_sees"] is True  # only that one module is told
    assert got["new_tokens"] == 4
    assert abs(got["f1"] - 2 / 3) < 1e-9  # lm-eval's metrics import scikit-learn as before
    assert got["source"] is True  # the module's source is still readable (tracebacks, inspect)


def test_the_switch_off_leaves_the_import_system_as_it_was():
    """With LLMRAY_TRANSFORMERS_SKLEARN=1 nothing is installed, so transformers imports scikit-learn as it
    decides (the test above shows it would: it sees scikit-learn available). No transformers import here."""
    code = ("import json, sys, llmray\n"
            "from llmray.hf_imports import _Finder\n"
            "print(json.dumps([type(f).__name__ for f in sys.meta_path if isinstance(f, _Finder)]))")
    assert _probe(code, LLMRAY_TRANSFORMERS_SKLEARN="1") == []
    assert _probe(code, LLMRAY_TRANSFORMERS_SKLEARN="0") == ["_Finder"]
