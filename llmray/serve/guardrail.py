"""The output guardrail hook: every response is screened before it leaves the server.

A guardrail is anything with `screen(prompt: str, response: str) -> Verdict` (or a plain
function with that signature; `as_guardrail` wraps it). The ingress calls it on each choice's
final text (non-streaming) or on the text so far before each chunk is sent (streaming); a
refused choice is replaced by the configured refusal message, `finish_reason="content_filter"`.

Where screens come from (`serve.guardrail` in pipeline.yaml, combined with `AllOf`):
  - the align stage's trained guardrail (`<run>/<align stage>/guardrail/`, format
    "llmray-guardrail": `llmray.safety.guardrail.load_guardrail`, P(harmful) x P(complies)),
    used by default when the pipeline has a completed align stage -> `AlignGuardrail`;
  - `blocklist`: regular expressions (case-insensitive) -> `RuleGuardrail`;
  - `function`: "module:callable", a callable returning a Verdict/bool or a Guardrail.
A guardrail folder may instead hold `guardrail.json` describing either
    {"type": "rules", "patterns": [...]}  or
    {"type": "classifier", "model": "<subfolder>", "threshold": 0.5, "unsafe_label": 1,
     "input": "response" | "conversation"}
(a transformers sequence classifier; 1 label = unsafe logit -> sigmoid, else softmax[unsafe_label]).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from llmray.chat import chat_ids


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""


class Guardrail(Protocol):
    def screen(self, prompt: str, response: str) -> Verdict: ...


class RuleGuardrail:
    """Refuses a response matching any of the regular expressions."""

    def __init__(self, patterns: list[str]):
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]

    def screen(self, prompt: str, response: str) -> Verdict:
        for p in self.patterns:
            if p.search(response):
                return Verdict(False, f"matched blocklist pattern {p.pattern!r}")
        return Verdict(True)


class ClassifierGuardrail:
    """A transformers sequence classifier scoring how unsafe a response is."""

    def __init__(self, model_dir: Path, threshold: float = 0.5, unsafe_label: int = 1, use_conversation=False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
        self.threshold, self.unsafe_label, self.use_conversation = threshold, unsafe_label, use_conversation

    def score(self, prompt: str, response: str) -> float:
        import torch

        if self.use_conversation and self.tokenizer.chat_template:
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            ids = chat_ids(self.tokenizer, msgs)
        else:
            ids = self.tokenizer(response)["input_ids"] or [self.tokenizer.bos_token_id or 0]
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids[-1024:]])).logits[0].float()
        if logits.numel() == 1:
            return float(torch.sigmoid(logits[0]))
        return float(torch.softmax(logits, -1)[self.unsafe_label])

    def screen(self, prompt: str, response: str) -> Verdict:
        s = self.score(prompt, response)
        return Verdict(s < self.threshold, f"classifier score {s:.3f} >= {self.threshold}" if s >= self.threshold
                       else "")


class AlignGuardrail:
    """The align stage's trained screen (`llmray.safety.guardrail`), as a Guardrail."""

    def __init__(self, folder: Path):
        from llmray.safety.guardrail import load_guardrail

        self.inner = load_guardrail(folder)

    def screen(self, prompt: str, response: str) -> Verdict:
        r = self.inner.screen(prompt, response)
        return Verdict(not r.flagged, r.reason)

    def refusal_text(self) -> str:
        return self.inner.refusal_text()


class AllOf:
    """Allowed only if every guardrail allows (the first refusal's reason is kept)."""

    def __init__(self, parts: list):
        self.parts = parts

    def screen(self, prompt: str, response: str) -> Verdict:
        for g in self.parts:
            v = g.screen(prompt, response)
            if not v.allowed:
                return v
        return Verdict(True)


class _FunctionGuardrail:
    def __init__(self, fn):
        self.fn = fn

    def screen(self, prompt: str, response: str) -> Verdict:
        v = self.fn(prompt, response)
        return v if isinstance(v, Verdict) else Verdict(bool(v), "" if v else "refused by guardrail function")


def as_guardrail(obj) -> Guardrail:
    """A Guardrail, or a function (prompt, response) -> Verdict | bool, as a Guardrail."""
    return obj if hasattr(obj, "screen") else _FunctionGuardrail(obj)


def load_function(spec: str) -> Guardrail:
    """"package.module:name" -> the Guardrail it names (a factory is called with no arguments)."""
    mod, _, name = spec.partition(":")
    obj = getattr(importlib.import_module(mod), name)
    if isinstance(obj, type):
        obj = obj()
    return as_guardrail(obj)


def load_stage_guardrail(folder: Path) -> Guardrail:
    """The screen an align stage left in `<run>/<stage>/guardrail/` (see module doc)."""
    folder = Path(folder)
    if (folder / "config.json").exists() and not (folder / "guardrail.json").exists():
        return AlignGuardrail(folder)
    desc = json.loads((folder / "guardrail.json").read_text())
    if desc.get("type") == "rules":
        return RuleGuardrail(list(desc.get("patterns", [])))
    if desc.get("type") == "classifier":
        sub = (folder / desc.get("model", "model")).resolve()
        if folder.resolve() not in sub.parents and sub != folder.resolve():
            raise ValueError(f"guardrail model {sub} is outside {folder}")
        return ClassifierGuardrail(sub, float(desc.get("threshold", 0.5)), int(desc.get("unsafe_label", 1)),
                                   desc.get("input", "response") == "conversation")
    raise ValueError(f"{folder / 'guardrail.json'}: unknown guardrail type {desc.get('type')!r}")


DEFAULT_REFUSAL = "I can't help with that."


def build_guardrail(spec: dict | None) -> tuple[Guardrail | None, str]:
    """From the serve spec's guardrail entry {"blocklist", "function", "folder", "message"}:
    (the combined screen or None, the text that replaces a refused response)."""
    if not spec:
        return None, DEFAULT_REFUSAL
    parts = []
    if spec.get("folder"):
        parts.append(load_stage_guardrail(Path(spec["folder"])))
    if spec.get("blocklist"):
        parts.append(RuleGuardrail(spec["blocklist"]))
    if spec.get("function"):
        parts.append(load_function(spec["function"]))
    message = spec.get("message") or next((p.refusal_text() for p in parts if hasattr(p, "refusal_text")
                                           and p.refusal_text()), DEFAULT_REFUSAL)
    return (AllOf(parts) if parts else None), message
