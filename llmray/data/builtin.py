"""The built-in data sets by name: what `data: builtin:<name>` in a pipeline resolves to.

One registry over the generators of llmray.data: instruction / preference / prompt / safety sets
(llmray.data.instruct, with the harm taxonomy of llmray.data.harm), red-team prompts (llmray.data.redteam), constitutional feedback examples
(llmray.data.feedback) and verifiable arithmetic (llmray.data.verifiable). Each entry is
(function of split -> records, record form); llmray.data.formats reads it to resolve and check specs.
"""

from __future__ import annotations

from llmray.data import redteam
from llmray.data.feedback import feedback_examples as build_feedback
from llmray.data.instruct import (
    benign_requests,
    harmful_requests,
    instruct_mix,
    instruction_pairs,
    preference_pairs,
    rl_prompts,
    safety_requests,
)
from llmray.data.verifiable import arithmetic_prompts


def redteam_prompts(split: str = "train") -> list[dict]:
    """Red-team prompts of the split (harmful requests of the harm taxonomy in plain, jailbreak and
    injection phrasings, each with its harmless look-alike mirror), as RL-style prompt records: what a
    constitution stage critiques. The train split uses only training intents, templates and wrappers,
    so the align stage's held-out suite stays unseen."""
    return [{"id": f"redteam:{p['id']}", "prompt": [{"role": "user", "content": p["text"]}], "harmful": harmful}
            for harmful in (True, False) for p in redteam.prompts(harmful, split)]


def feedback_examples(split: str = "train") -> list[dict]:
    """Compare / critique / revise conversations for training a feedback model (llmray.safety.constitution)."""
    return build_feedback(split)


# name -> (function of split, what records look like). `data: builtin:<name>` in a pipeline.
BUILTINS = {
    "instruct": (instruct_mix, "chat"),  # stdlib questions + the safety share (refusals, look-alikes)
    "qa": (instruction_pairs, "chat"),  # the stdlib questions alone
    "prefs": (preference_pairs, "pref"),
    "prompts": (rl_prompts, "prompt"),
    "harmful": (harmful_requests, "chat"),
    "benign": (benign_requests, "chat"),
    "safety": (safety_requests, "chat"),
    "feedback": (feedback_examples, "chat"),
    "redteam": (redteam_prompts, "prompt"),
    "arithmetic": (arithmetic_prompts, "prompt"),  # llmray.data.verifiable: checkable answers (RLVR)
}


def load_builtin(name: str, split: str = "train") -> list[dict]:
    """The records of a built-in data set (`split`: 'train' or 'test')."""
    if name not in BUILTINS:
        raise KeyError(f"unknown built-in data set {name!r}; known: {sorted(BUILTINS)}")
    return BUILTINS[name][0](split)
