"""lm-eval as a black-box client of `llmray serve`: its `local-completions` model (token-id prompts,
`echo`, `logprobs`) against the OpenAI endpoint on a real local Ray Serve gives the same multiple-choice
accuracy and the same per-request log-likelihoods (multiple choice and rolling) as the eval stage's
in-process evaluation (lm-eval's HFLM) of the same model on the same built-in tasks."""

from __future__ import annotations

import json
import shutil
import types

import pytest

from llmray.eval.harness import BUILTIN_DIR, TaskPlan, evaluate_model, task_manager

TASKS = ["llmray_docmatch", "llmray_docppl"]
LIMIT = 8


def _logliks(samples: list[dict]) -> dict:
    """(doc, request) -> log-likelihood; multiple-choice responses are (ll, is_greedy), rolling ones floats."""
    return {(s["doc_id"], i): (r[0] if isinstance(r[0], float) else r[0][0]) for s in samples
            for i, r in enumerate(s["resps"])}


@pytest.fixture(scope="module")
def served_base(serve_port, tmp_path_factory, tiny_causal_dir):
    """The tiny model as stage `base` of a completed run, served (hf engine) on the session's Serve."""
    from llmray.config import RayConfig
    from llmray.serve.launch import start_serving, stop_serving
    from llmray.serve_config import ServeConfig

    workdir = tmp_path_factory.mktemp("served-eval")
    stage = workdir / "evalserve" / "base"
    shutil.copytree(tiny_causal_dir, stage / "model")
    (stage / "manifest.json").write_text(json.dumps({
        "name": "base", "kind": "pretrain", "status": "completed", "finished": "2025-01-01T00:00:00+00:00",
        "outputs": {"model": "model"}, "metrics": {}}))
    cfg = ServeConfig(models=["base"], port=serve_port, engine="hf", num_cpus=0.5, ingress_num_cpus=0.05,
                      max_prompt_tokens=1024)
    pipe = types.SimpleNamespace(name="evalserve", workdir=str(workdir), ray=RayConfig(), stages={}, serve=cfg)
    info = start_serving(pipe, echo=lambda m: None)
    yield info["url"]
    stop_serving(pipe)


@pytest.mark.integration  # ~50-70 s on 2 cores (mostly Serve start-up); in CI: issue 18 asks for it there
def test_lm_eval_local_completions_against_llmray_serve_matches_in_process(served_base, tiny_causal_dir):
    from lm_eval import simple_evaluate

    plan = TaskPlan(list(TASKS), [str(BUILTIN_DIR)])
    local = evaluate_model(str(tiny_causal_dir), plan, {"backend": "hf", "batch_size": 8, "limit": LIMIT,
                                                        "log_samples": True, "dtype": "float32",
                                                        "bootstrap_iters": 0})
    # The command docs/stages/eval.md shows, as a call: the model folder is the tokenizer.
    remote = simple_evaluate(
        model="local-completions", tasks=list(TASKS), task_manager=task_manager(plan), limit=LIMIT,
        model_args={"base_url": f"{served_base}/completions", "model": "base", "tokenizer_backend": "huggingface",
                    "tokenizer": str(tiny_causal_dir), "max_length": 1024, "batch_size": 8},
        log_samples=True, bootstrap_iters=0)
    for task in TASKS:
        mine, theirs = local["results"]["results"][task], remote["results"][task]
        key = "acc,none" if task == "llmray_docmatch" else "bits_per_byte,none"
        assert theirs[key] == pytest.approx(mine[key], abs=1e-6)
        a, b = _logliks(local["samples"][task]), _logliks(remote["samples"][task])
        assert a.keys() == b.keys() and len(a) >= LIMIT
        gap = max(abs(a[k] - b[k]) for k in a)
        print(f"{task}: {key} {theirs[key]:.4f} served vs {mine[key]:.4f} in process; max |dll| {gap:.2e}")
        assert gap < 1e-3
