"""`llmray serve` / `llmray compare` as a user runs them, on the quickstart pipeline.yaml.

The quickstart's stages are not trained here: their run folders are faked (completed manifests,
the tiny random model, an align manifest with the current fingerprint and a guardrail), so the
commands see exactly what a finished `llmray run pipeline.yaml` leaves behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli import llmray

from llmray.cli import build_parser
from llmray.testing import free_port

REPO = Path(__file__).resolve().parents[1]


def test_cli_parses_serve_and_compare_flags():
    p = build_parser()
    args, _ = p.parse_known_args(["compare", "pipeline.yaml", "serve.port=8001", "What is 2+2?", "--models",
                                  "base,chat"])
    assert (args.prompt, args.overrides, args.models) == ("What is 2+2?", ["serve.port=8001"], "base,chat")
    args, _ = p.parse_known_args(["serve", "pipeline.yaml", "--detach", "--allow-blocked"])
    assert args.detach and args.allow_blocked and not args.stop
    assert not p.parse_known_args(["serve", "pipeline.yaml"])[0].detach  # blocking is the default
    with pytest.raises(SystemExit):
        p.parse_known_args(["serve", "pipeline.yaml", "--detach", "--stop"])


def test_rollback_takes_the_name_as_a_word_or_with_to(capsys):
    from llmray.cli import _rollback_name

    p = build_parser()
    for argv, name, overrides in ((["rollback", "f.yaml", "assistant", "serve.port=8001"], "assistant", ["serve.port=8001"]),
                                  (["rollback", "f.yaml", "--to", "assistant"], "assistant", []),
                                  (["rollback", "f.yaml", "serve.port=1"], None, ["serve.port=1"])):
        args, _ = p.parse_known_args(argv)
        _rollback_name(p, args)
        assert (args.to, args.overrides) == (name, overrides)
    args, _ = p.parse_known_args(["rollback", "f.yaml", "a", "--to", "b"])
    with pytest.raises(SystemExit):
        _rollback_name(p, args)
    assert "rollback takes one served name, got a, b" in capsys.readouterr().err




def _fake_quickstart_run(pipe, model_dir: Path, blocked: str) -> None:
    import numpy as np

    from llmray.runner import fingerprints, run_dir
    from llmray.safety.guardrail import FeatureSpec, Guardrail

    root = run_dir(pipe)
    for stage in pipe.serve.models:
        shutil.copytree(model_dir, root / stage / "model")
        (root / stage / "manifest.json").write_text(json.dumps(
            {"name": stage, "kind": pipe.stages[stage].kind, "status": "completed", "outputs": {"model": "model"},
             "metrics": {}}))
    align = [n for n, c in pipe.stages.items() if c.kind == "align"][-1]
    spec = FeatureSpec(dim_bits=10)
    w = np.zeros(1 << spec.dim_bits)
    Guardrail(w, w, (-5.0, -5.0), spec, refusal="Sorry.").save(root / align / "guardrail")  # lets all pass
    gate = {m: {"status": "passed", "reasons": []} for m in pipe.stages[align].models}
    gate[blocked] = {"status": "blocked", "reasons": ["unsafe_rate 0.9 > 0.2"]}
    (root / align / "manifest.json").write_text(json.dumps(
        {"name": align, "kind": "align", "status": "completed", "fingerprint": fingerprints(pipe)[align],
         "outputs": {"guardrail": "guardrail"}, "metrics": {"gate": gate}}))


@pytest.mark.slow
def test_serve_detach_compare_stop_on_the_quickstart(tmp_path, tiny_causal_dir):
    import openai

    from llmray.pipeline import load_pipeline
    from llmray.serve.launch import healthy

    port = free_port()
    # The quickstart's own replica sizes: they must fit this 2-core machine as shipped.
    overrides = [f"workdir={tmp_path}", "serve.engine=hf", f"serve.port={port}"]
    pipe = load_pipeline(REPO / "pipeline.yaml", overrides)
    assert pipe.serve.default and any(c.kind == "align" for c in pipe.stages.values())
    _fake_quickstart_run(pipe, tiny_causal_dir, blocked=pipe.serve.default)

    refused = llmray("serve", "pipeline.yaml", *overrides, "--detach", timeout=120)
    assert refused.returncode == 2 and "align gate blocked" in refused.stderr, refused.stderr[-2000:]

    up = llmray("serve", "pipeline.yaml", *overrides, "--detach", "--allow-blocked")
    url = f"http://127.0.0.1:{port}/v1"
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        assert up.stdout.strip().splitlines()[-2] == url or url in up.stdout
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        ids = [m.id for m in client.models.list()]
        assert ids == [f"{pipe.name}/{m}" for m in pipe.serve.models]
        r = client.chat.completions.create(model=f"{pipe.name}/{pipe.serve.default}", max_tokens=4,
                                           messages=[{"role": "user", "content": "Hi"}])
        assert r.choices[0].finish_reason in ("stop", "length")

        cmp = llmray("compare", "pipeline.yaml", *overrides, "Hello there", "--models", "base,chat",
                      "--max-tokens", "4", timeout=120)
        assert cmp.returncode == 0, cmp.stderr[-2000:]
        assert f"── {pipe.name}/base" in cmp.stdout and f"── {pipe.name}/chat" in cmp.stdout
    finally:
        stop = llmray("serve", "pipeline.yaml", *overrides, "--stop", timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert not healthy(url)
