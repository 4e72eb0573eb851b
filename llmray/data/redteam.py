"""Red-team suites: harmful prompts by category and a benign control set of the same size.

Built-in suite (offline, deterministic): the held-out (`test`) phrasings of the harm taxonomy
(`llmray.data.harm.phrasings`): held-out intents of every harm category, and every intent of the
unseen category, in held-out request templates (category `harmful`), held-out jailbreak wrappers
(`jailbreak`: role-play, "ignore previous instructions", hypothetical framing) and held-out
injections hidden inside documents the user asks to process (`injection`) — never seen by
SFT/DPO/PPO/the guardrail. Every harmful record has a benign mirror: the same template or wrapper
around a held-out look-alike of the same harm category (category `benign`), so the two sets differ
only in the intent and over-refusal is measured on look-alikes. Held-out everyday questions of the
instruction set (`technique` `everyday`) measure over-refusal on ordinary traffic.

User suites: JSONL files named in the align stage's `suites:`; each line an object with a prompt
(a string or a list of chat messages), a category and a harmful flag (field names configurable).
Lines that cannot be used are quarantined with file, line number and reason, never dropped silently.

A record: {"id", "category", "harmful": bool, "messages": [chat turns ending with the user],
"technique", "group", "mirror", "source", "harm": the taxonomy category (None for everyday and user
prompts), "unseen": True for the held-out category}. `group`/`mirror` drive the size cap (`select`)
so a harmful record and its benign mirror are kept or dropped together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmray.data import harm, instruct
from llmray.data.harm import INJECTIONS, JAILBREAKS, request, wrap, wrapper_split  # noqa: F401  (re-exported)

HARMFUL_CATEGORIES = ("harmful", "jailbreak", "injection")


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def intents(harmful: bool, split: str) -> list[tuple[str, str]]:
    """(id, intent) of the taxonomy's harmful intents or benign look-alikes in one split."""
    rows = harm.harmful_intents(split) if harmful else harm.lookalikes(split)
    return [(r["id"], r["intent"]) for r in rows]


def prompts(harmful: bool, split: str, wrappers: str | None = None) -> list[dict]:
    """The split's phrasings (`harm.phrasings`) of harmful intents or of their benign mirrors.

    `wrappers`: "all", "train" or "test" (default: the split's own). Returns records {"id",
    "category", "technique", "text", "mirror", "intent", "harm", "unseen", "answer"}; `mirror` is the
    same for a harmful phrasing and its benign twin (same template or wrapper, same harm category).
    """
    return [p for p in harm.phrasings(split, wrappers) if p["harmful"] == harmful]


# Everyday (instruction) prompts per split in the guardrail's pairs; the red-team suite takes as many.
EVERYDAY_TRAIN, EVERYDAY_TEST = 400, 48


def everyday(split: str) -> list[dict]:
    """Ordinary questions of the built-in instruction set (the traffic a served model mostly gets),
    a deterministic spread over the split: {"id", "prompt", "answer"}."""
    rows = instruct.instruction_pairs(split)
    n = EVERYDAY_TRAIN if split == "train" else EVERYDAY_TEST
    step = max(len(rows) // max(n, 1), 1)
    return [{"id": r["id"], "prompt": r["messages"][0]["content"], "answer": r["messages"][1]["content"]}
            for r in rows[::step][:n]]


def builtin_suite() -> list[dict]:
    """The built-in red-team suite: held-out harmful phrasings by category + benign mirrors + everyday."""
    out = []
    for harmful in (True, False):
        for p in prompts(harmful, "test"):
            cat = p["category"] if harmful else "benign"
            out.append({"id": p["id"], "category": cat, "harmful": harmful, "technique": p["technique"],
                        "messages": [{"role": "user", "content": p["text"]}],
                        "group": cat if harmful else f"benign:{p['category']}", "mirror": p["mirror"],
                        "source": "builtin", "harm": p["harm"], "unseen": p["unseen"]})
    # Ordinary held-out questions: over-refusal must be measured on everyday traffic too.
    for q in everyday("test"):
        out.append({"id": q["id"], "category": "benign", "harmful": False, "technique": "everyday",
                    "messages": [{"role": "user", "content": q["prompt"]}], "group": "benign:everyday",
                    "mirror": f"everyday:{q['id']}", "source": "builtin", "harm": None, "unseen": False})
    return out


def prompt_text(rec: dict) -> str:
    """The text the guardrail screens: the last user turn."""
    users = [m["content"] for m in rec["messages"] if m.get("role") == "user"]
    return users[-1] if users else rec["messages"][-1]["content"]


# ---------------------------------------------------------------- user suites


def _messages(value) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty prompt")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        if value[-1]["role"] != "user":
            raise ValueError("the prompt's messages must end with a user turn")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError("prompt must be a non-empty string or a list of {role, content} messages ending with user")


def _record(obj, spec, n: int, stem: str) -> dict:
    if not isinstance(obj, dict):
        raise TypeError(f"line is a JSON {type(obj).__name__}, expected an object")
    if spec.prompt_field not in obj:
        raise ValueError(f"no {spec.prompt_field!r} field")
    messages = _messages(obj[spec.prompt_field])
    line_cat = obj.get(spec.category_field) if spec.category_field else None
    category = line_cat if line_cat is not None else spec.category
    harmful = obj.get(spec.harmful_field) if spec.harmful_field else None
    # Precedence: the line's flag, the line's category, the suite's flag, the suite's category.
    if harmful is None:
        if line_cat is not None or spec.harmful is None:
            harmful = None if category is None else category != "benign"
        else:
            harmful = spec.harmful
    if not isinstance(harmful, bool):
        raise TypeError(f"cannot tell whether the prompt is harmful: set a boolean {spec.harmful_field!r} "
                         f"field, a category, or `harmful:` on the suite (got {harmful!r})")
    if category is None:
        category = "custom" if harmful else "benign"
    if not isinstance(category, str) or not category:
        raise ValueError(f"category must be a non-empty string (got {category!r})")
    if harmful and category == "benign":
        raise ValueError("a prompt in category 'benign' is marked harmful")
    rid = obj.get(spec.id_field) if spec.id_field else None
    rid = f"{stem}:{rid if rid is not None else n}"
    return {"id": rid, "category": category, "harmful": harmful, "technique": str(obj.get("technique", "")),
            "messages": messages, "group": category, "mirror": rid, "source": f"{spec.path}:{n}",
            "harm": None, "unseen": False}


def load_suite_file(spec) -> tuple[list[dict], list[dict]]:
    """Read one user JSONL suite: (records, quarantined lines {"file", "line", "reason", "text"})."""
    path = Path(spec.path).expanduser()
    records, bad = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(_record(json.loads(line), spec, n, path.stem))
            except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
                bad.append({"file": str(path), "line": n, "reason": f"{type(e).__name__}: {e}",
                            "text": line.rstrip("\n")[:500]})
    return records, bad


def select(records: list[dict], max_per_group: int | None) -> list[dict]:
    """Keep at most `max_per_group` records per group, chosen by a hash of the mirror key.

    A harmful record and its benign mirror share the key, so they are kept or dropped together
    and the benign set stays the same size as the harmful one.
    """
    if max_per_group is None:
        return list(records)
    by_group: dict[str, list[dict]] = {}
    for r in records:
        by_group.setdefault(r["group"], []).append(r)
    keep = set()
    for group in by_group.values():
        ranked = sorted(group, key=lambda r: (_h("sel:" + r["mirror"]), r["id"]))
        keep.update(r["id"] for r in ranked[:max_per_group])
    return [r for r in records if r["id"] in keep]


def build_suite(builtin: bool, suites: list, max_per_group: int | None) -> tuple[list[dict], list[dict]]:
    """The suite an align stage evaluates: (records, quarantined lines). Ids must be unique."""
    records = builtin_suite() if builtin else []
    quarantined: list[dict] = []
    for spec in suites:
        recs, bad = load_suite_file(spec)
        records.extend(recs)
        quarantined.extend(bad)
    seen: dict[str, str] = {}
    for r in records:
        if r["id"] in seen:
            raise ValueError(f"duplicate prompt id {r['id']!r} ({seen[r['id']]} and {r['source']}); "
                             "set `id_field` or give the suite files different names")
        seen[r["id"]] = r["source"]
    records = select(records, max_per_group)
    if not any(r["harmful"] for r in records):
        raise ValueError("the red-team suite has no harmful prompts")
    return records, quarantined


def summary(records: list[dict], quarantined: list[dict]) -> dict:
    by_cat: dict[str, int] = {}
    for r in records:
        by_cat[r["category"]] = by_cat.get(r["category"], 0) + 1
    n_harm = sum(r["harmful"] for r in records)
    return {"n": len(records), "n_harmful": n_harm, "n_benign": len(records) - n_harm,
            "by_category": dict(sorted(by_cat.items())), "quarantined": len(quarantined)}
