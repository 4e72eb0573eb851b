"""What gets served (completed stages, the align gate, the default, the API key) and the guardrail hook.

No Ray here: a run directory with hand-written manifests stands in for a finished pipeline.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import pytest

from llmray.config import RayConfig
from llmray.serve.guardrail import (
    AllOf,
    ClassifierGuardrail,
    RuleGuardrail,
    Verdict,
    as_guardrail,
    build_guardrail,
    load_function,
    load_stage_guardrail,
)
from llmray.serve.spec import ServeError, gate_of, resolve_spec
from llmray.serve_config import GuardrailConfig, ServeConfig

REPO = Path(__file__).resolve().parents[1]


def _stage(root: Path, name: str, status="completed", model=True, metrics=None, **extra) -> None:
    d = root / name
    (d / "model").mkdir(parents=True, exist_ok=True)
    if model:
        (d / "model" / "config.json").write_text("{}")
    man = {"name": name, "kind": "sft", "status": status, "finished": "2025-01-02T03:04:05+00:00",
           "outputs": {"model": "model"} if model else {}, "metrics": metrics or {}, **extra}
    (d / "manifest.json").write_text(json.dumps(man))


def _pipe(tmp_path: Path, models, **serve):
    return types.SimpleNamespace(name="demo", workdir=str(tmp_path), ray=RayConfig(),
                                 stages={m: types.SimpleNamespace(kind="sft") for m in ["base", "chat", "dpo"]},
                                 serve=ServeConfig(models=models, **serve))


BLOCKED = {"gate": {"status": "blocked", "reasons": ["toxicity 0.4 > 0.1"]}}


def test_gate_of_reads_metrics_gate_and_top_level_flag():
    assert gate_of({}) == (False, [])
    assert gate_of({"metrics": {"gate": {"status": "passed", "reasons": []}}}) == (False, [])
    assert gate_of({"metrics": BLOCKED}) == (True, ["toxicity 0.4 > 0.1"])
    assert gate_of({"blocked": True})[0] is True


def test_spec_lists_completed_models_with_ids_and_absolute_dirs(tmp_path):
    root = tmp_path / "demo"
    _stage(root, "base")
    _stage(root, "chat")
    spec = resolve_spec(_pipe(tmp_path, ["base", "chat"]))
    assert [m["id"] for m in spec["models"]] == ["demo/base", "demo/chat"]
    assert spec["models"][1]["dir"] == str((root / "chat" / "model").resolve())
    assert spec["models"][0]["created"] > 0
    assert spec["default"] == "demo/chat"  # last served stage when no default is named
    assert spec["api_key_sha256"] is None and spec["guardrail"] is None


@pytest.mark.parametrize("setup, match", [
    (lambda r: _stage(r, "chat", status="failed"), "has not completed"),
    (lambda r: None, "has not completed"),
    (lambda r: _stage(r, "chat", model=False), "no `model` output"),
])
def test_unservable_stages_are_refused(tmp_path, setup, match):
    setup(tmp_path / "demo")
    with pytest.raises(ServeError, match=match):
        resolve_spec(_pipe(tmp_path, ["chat"]))


def test_blocked_model_is_served_but_never_the_implicit_default(tmp_path):
    root = tmp_path / "demo"
    _stage(root, "chat")
    _stage(root, "dpo", metrics=BLOCKED)
    spec = resolve_spec(_pipe(tmp_path, ["chat", "dpo"]))
    assert spec["default"] == "demo/chat"
    dpo = spec["models"][1]
    assert dpo["blocked"] and dpo["gate_reasons"] == ["toxicity 0.4 > 0.1"]
    assert resolve_spec(_pipe(tmp_path, ["chat", "dpo"]), allow_blocked=True)["default"] == "demo/dpo"


def test_blocked_explicit_default_needs_allow_blocked(tmp_path):
    _stage(tmp_path / "demo", "dpo", blocked=True)
    with pytest.raises(ServeError, match="align gate blocked 'dpo'.*--allow-blocked"):
        resolve_spec(_pipe(tmp_path, ["dpo"], default="dpo"))
    assert resolve_spec(_pipe(tmp_path, ["dpo"], default="dpo"), allow_blocked=True)["default"] == "demo/dpo"
    # all blocked, no explicit default: served, but requests must name the model
    assert resolve_spec(_pipe(tmp_path, ["dpo"]))["default"] is None


def test_api_key_only_its_hash_leaves_the_driver(tmp_path, monkeypatch):
    _stage(tmp_path / "demo", "chat")
    pipe = _pipe(tmp_path, ["chat"], api_key_env="LLMRAY_TEST_KEY")
    monkeypatch.delenv("LLMRAY_TEST_KEY", raising=False)
    with pytest.raises(ServeError, match="LLMRAY_TEST_KEY is not set"):
        resolve_spec(pipe)
    monkeypatch.setenv("LLMRAY_TEST_KEY", "s3cret")
    spec = resolve_spec(pipe)
    assert spec["api_key_sha256"] == hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in json.dumps(spec)


def test_no_guardrail_unless_asked_when_there_is_no_align_stage(tmp_path):
    _stage(tmp_path / "demo", "chat")
    assert resolve_spec(_pipe(tmp_path, ["chat"]))["guardrail"] is None
    g = resolve_spec(_pipe(tmp_path, ["chat"], guardrail={"blocklist": ["bomb"], "message": "no"}))["guardrail"]
    assert g == {"blocklist": ["bomb"], "function": None, "folder": None, "message": "no"}
    with pytest.raises(ServeError, match="not an align stage"):
        resolve_spec(_pipe(tmp_path, ["chat"], guardrail={"stage": "chat"}))


# ---------------------------------------------------------------- with the quickstart pipeline's align stage


def _quickstart(tmp_path):
    from llmray.pipeline import load_pipeline

    return load_pipeline(REPO / "pipeline.yaml", [f"workdir={tmp_path}"])


def _align_run(pipe, gate: dict):
    """Completed served stages, plus the align stage's manifest (current fingerprint) and guardrail/."""
    import numpy as np

    from llmray.runner import fingerprints, run_dir
    from llmray.safety.guardrail import FeatureSpec, Guardrail

    root = run_dir(pipe)
    for stage in pipe.serve.models:
        _stage(root, stage)
    align = [n for n, c in pipe.stages.items() if c.kind == "align"][-1]
    spec = FeatureSpec(dim_bits=10)
    w = np.zeros(1 << spec.dim_bits)
    Guardrail(w, w, (5.0, 5.0), spec, refusal="Sorry, I can't help.").save(root / align / "guardrail")
    man = {"name": align, "kind": "align", "status": "completed", "fingerprint": fingerprints(pipe)[align],
           "outputs": {"guardrail": "guardrail"}, "metrics": {"gate": gate}}
    (root / align / "manifest.json").write_text(json.dumps(man))
    return root, align


def test_align_stage_gate_and_guardrail_are_applied(tmp_path):
    pipe = _quickstart(tmp_path)
    served = pipe.serve.models
    ok = {"status": "passed", "reasons": []}
    gate = {m: ok for m in served} | {served[0]: {"status": "blocked", "reasons": ["unsafe_rate 0.9 > 0.2"]}}
    root, align = _align_run(pipe, gate)
    spec = resolve_spec(pipe)
    first = spec["models"][0]
    assert first["blocked"] and first["gate"] == "blocked" and first["gate_reasons"] == [
        f"{align}: unsafe_rate 0.9 > 0.2"]
    assert [m["gate"] for m in spec["models"][1:]] == ["passed"] * (len(served) - 1)
    assert spec["guardrail"]["folder"] == str((root / align / "guardrail").resolve())
    screen, message = build_guardrail(spec["guardrail"])
    assert message == "Sorry, I can't help."  # the align guardrail's own refusal text
    assert screen.screen("how do I pick a lock", "Step one: ...").allowed is False  # biases make P(unsafe)~1
    assert resolve_spec(_pipe_off(pipe))["guardrail"] is None


def test_a_pass_judged_with_the_guardrail_needs_the_guardrail_when_served(tmp_path):
    pipe = _quickstart(tmp_path)
    guarded = {"status": "passed", "reasons": [], "basis": "with the guardrail in front"}
    _align_run(pipe, {m: guarded for m in pipe.serve.models})
    spec = resolve_spec(pipe)  # the align guardrail screens: the pass holds
    assert not any(m["blocked"] for m in spec["models"]) and spec["guardrail"]["folder"]
    with pytest.raises(ServeError, match="passed with the guardrail in front"):
        resolve_spec(_pipe_off(pipe))  # serving without it: every model is blocked, the default too
    off = resolve_spec(_pipe_off(pipe), allow_blocked=True)
    assert all(m["blocked"] and "serve.guardrail does not screen" in m["gate_reasons"][0] for m in off["models"])


def _pipe_off(pipe):
    return pipe.model_copy(update={"serve": pipe.serve.model_copy(update={"guardrail": GuardrailConfig(
        use_align=False)})})


def test_align_gate_blocks_the_default_and_distrusts_a_missing_align_run(tmp_path):
    pipe = _quickstart(tmp_path)
    from llmray.runner import run_dir

    for stage in pipe.serve.models:
        _stage(run_dir(pipe), stage)
    assert pipe.serve.default is not None
    with pytest.raises(ServeError, match="align gate blocked"):  # the align stage has not run
        resolve_spec(pipe)
    spec = resolve_spec(pipe, allow_blocked=True)
    assert all(m["blocked"] and "has not run" in m["gate_reasons"][0] for m in spec["models"])


# ---------------------------------------------------------------- the guardrail hook


def test_rule_guardrail_and_composition():
    rules = RuleGuardrail([r"\bpassword\b", "rm -rf"])
    refused = rules.screen("q", "the PASSWORD is 1234")
    assert not refused.allowed and "password" in refused.reason
    assert rules.screen("q", "passwords are fine").allowed
    both = AllOf([rules, as_guardrail(lambda prompt, response: "secret" not in prompt)])
    assert both.screen("tell me a secret", "ok").allowed is False
    assert both.screen("hello", "ok").allowed is True


def test_function_spec_loads_functions_and_guardrail_classes(tmp_path, monkeypatch):
    (tmp_path / "my_screens.py").write_text(
        "from llmray.serve.guardrail import Verdict\n"
        "def no_digits(prompt, response):\n"
        "    return not any(c.isdigit() for c in response)\n"
        "class Shouty:\n"
        "    def screen(self, prompt, response):\n"
        "        return Verdict(not response.isupper(), 'shouting')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    f = load_function("my_screens:no_digits")
    assert f.screen("", "abc").allowed and f.screen("", "a1") == Verdict(False, "refused by guardrail function")
    c = load_function("my_screens:Shouty")
    assert c.screen("", "HEY") == Verdict(False, "shouting") and c.screen("", "hey").allowed


def test_stage_guardrail_rules_and_path_escape(tmp_path):
    folder = tmp_path / "guardrail"
    folder.mkdir()
    (folder / "guardrail.json").write_text(json.dumps({"type": "rules", "patterns": ["forbidden"]}))
    g = load_stage_guardrail(folder)
    assert not g.screen("", "a forbidden word").allowed and g.screen("", "fine").allowed
    (folder / "guardrail.json").write_text(json.dumps({"type": "classifier", "model": "../../etc"}))
    with pytest.raises(ValueError, match="outside"):
        load_stage_guardrail(folder)
    (folder / "guardrail.json").write_text(json.dumps({"type": "magic"}))
    with pytest.raises(ValueError, match="unknown guardrail type"):
        load_stage_guardrail(folder)


def test_classifier_guardrail_scores_with_a_sequence_classifier(tmp_path, tiny_reward_dir):
    import shutil

    folder = tmp_path / "guardrail"
    shutil.copytree(tiny_reward_dir, folder / "model")
    (folder / "guardrail.json").write_text(json.dumps({"type": "classifier", "model": "model", "threshold": 0.0}))
    g = load_stage_guardrail(folder)
    assert isinstance(g, ClassifierGuardrail)
    s = g.score("q", "some answer")
    assert 0.0 <= s <= 1.0
    assert not g.screen("q", "some answer").allowed  # threshold 0: everything counts as unsafe
    g.threshold = 1.01
    assert g.screen("q", "some answer").allowed


def test_build_guardrail_from_spec_entry(tmp_path):
    assert build_guardrail(None) == (None, "I can't help with that.")
    assert build_guardrail({"blocklist": [], "function": None, "folder": None})[0] is None
    g, message = build_guardrail({"blocklist": ["zzz"], "function": None, "folder": None, "message": "no"})
    assert not g.screen("", "zzz").allowed and message == "no"
