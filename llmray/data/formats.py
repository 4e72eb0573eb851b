"""Reading the post-training data users already have, with malformed records quarantined.

A data spec is a string: `builtin:<name>` (see `llmray.data.instruct.BUILTINS`) or a path /
glob of JSON Lines files (`.jsonl`, `.jsonl.gz`). Every record is normalised to one canonical
form per use, whatever format it came in:

- "chat" (SFT): {"id", "messages": [{"role", "content"}, ...]} from
  OpenAI chat `{"messages": [...]}`, Alpaca `{"instruction", "input"?, "output"}`, or
  `{"prompt", "completion"}`.
- "pref" (reward, DPO): {"id", "prompt": [messages], "chosen": str, "rejected": str} from
  `{"prompt", "chosen", "rejected"}` where each is a string or a message list (TRL /
  UltraFeedback style: chosen/rejected may repeat the prompt turns; the shared prefix is cut).
- "prompt" (RL): {"id", "prompt": [messages], "reference"?, "harmful"?} from `{"prompt": str | messages}`
  (a boolean `harmful` is kept) or a chat record (its last assistant turn becomes the reference).

Data flow: files --line by line--> json.loads --normalise_<use>--> canonical record, or a
quarantine entry {"source", "line", "reason", "text"} that `write_quarantine` saves as
`<stage>/quarantine/<use>.jsonl`; stages report `metrics.quarantined`. Nothing is silently
dropped and nothing raises on a bad record.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Use = Literal["chat", "pref", "prompt"]
ROLES = ("system", "user", "assistant")


class Malformed(ValueError):
    """A record that cannot be used; the message is the quarantine reason."""


@dataclass
class Loaded:
    records: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- normalisers


def _messages(value, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise Malformed(f"{what} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise Malformed(f"{what}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise Malformed(f"{what}[{i}] has unknown role {m['role']!r} (expected one of {list(ROLES)})")
        if not isinstance(m["content"], str):
            raise Malformed(f"{what}[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"{what} must be a non-empty string")
    return value


def normalise_chat(rec: dict) -> dict:
    """OpenAI messages / Alpaca / prompt-completion -> {"messages": [...]} with an assistant turn."""
    if "messages" in rec:
        msgs = _messages(rec["messages"], "messages")
    elif "instruction" in rec and "output" in rec:
        extra = rec.get("input") or ""
        if not isinstance(extra, str):
            raise Malformed("input must be a string")
        user = _text(rec["instruction"], "instruction") + (f"\n\n{extra}" if extra.strip() else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec["output"], "output")}]
    elif "prompt" in rec and "completion" in rec:
        msgs = [{"role": "user", "content": _text(rec["prompt"], "prompt")},
                {"role": "assistant", "content": _text(rec["completion"], "completion")}]
    else:
        raise Malformed("not a chat record: expected 'messages', 'instruction'+'output' or 'prompt'+'completion'")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        raise Malformed("no non-empty assistant turn to learn from")
    return {"messages": msgs}


def _response(value, prompt: list[dict], what: str) -> str:
    """A chosen/rejected field -> the assistant reply text (prompt turns repeated in it are cut)."""
    if isinstance(value, str):
        return _text(value, what)
    msgs = _messages(value, what)
    if msgs[: len(prompt)] == prompt:
        msgs = msgs[len(prompt):]
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise Malformed(f"{what} must be one assistant reply (after the prompt turns)")
    return _text(msgs[0]["content"], what)


def normalise_pref(rec: dict) -> dict:
    """{"prompt", "chosen", "rejected"} in string or message-list form -> canonical pair."""
    missing = [k for k in ("chosen", "rejected") if k not in rec]
    if missing:
        raise Malformed(f"missing field(s) {missing}")
    if "prompt" in rec:
        p = rec["prompt"]
        prompt = [{"role": "user", "content": _text(p, "prompt")}] if isinstance(p, str) else _messages(p, "prompt")
    elif isinstance(rec["chosen"], list) and len(rec["chosen"]) > 1:
        prompt = _messages(rec["chosen"], "chosen")[:-1]  # implicit prompt: all but the last turn
    else:
        raise Malformed("missing field 'prompt' (and chosen is not a conversation that contains it)")
    if not prompt or prompt[-1]["role"] == "assistant":
        raise Malformed("the prompt must end with a user (or system) turn")
    chosen, rejected = _response(rec["chosen"], prompt, "chosen"), _response(rec["rejected"], prompt, "rejected")
    if chosen == rejected:
        raise Malformed("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def normalise_prompt(rec: dict) -> dict:
    """{"prompt": str | messages} or a chat record -> {"prompt": [...], "reference"?}."""
    if "prompt" in rec and "completion" not in rec:
        p = rec["prompt"]
        prompt = [{"role": "user", "content": _text(p, "prompt")}] if isinstance(p, str) else _messages(p, "prompt")
        out = {"prompt": prompt}
        if isinstance(rec.get("reference"), str):
            out["reference"] = rec["reference"]
        if isinstance(rec.get("harmful"), bool):  # red-team prompts: lets a constitution stage check its judge
            out["harmful"] = rec["harmful"]
        return out
    msgs = normalise_chat(rec)["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    if last == 0:
        raise Malformed("a chat record used as a prompt needs a turn before the assistant reply")
    return {"prompt": msgs[:last], "reference": msgs[last]["content"]}


NORMALISE = {"chat": normalise_chat, "pref": normalise_pref, "prompt": normalise_prompt}


# ---------------------------------------------------------------- files


def _files(spec: str) -> list[str]:
    files = sorted(glob.glob(str(Path(spec).expanduser()))) if any(c in spec for c in "*?[") else [spec]
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise FileNotFoundError(f"data {spec!r}: no such file(s) {missing or [spec]}")
    return files


def _lines(path: str) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def read_jsonl(spec: str, use: Use) -> Loaded:
    """Every record of the files named by `spec`, normalised for `use`; bad ones quarantined."""
    norm = NORMALISE[use]
    out = Loaded()
    for path in _files(spec):
        for n, line in _lines(path):
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise Malformed(f"a record must be a JSON object, got {type(rec).__name__}")
                canon = norm(rec)
            except json.JSONDecodeError as e:
                out.quarantined.append(quarantine_entry(path, n, f"invalid JSON: {e.msg}", line))
                continue
            except Malformed as e:
                out.quarantined.append(quarantine_entry(path, n, str(e), line))
                continue
            canon["id"] = str(rec.get("id", f"{Path(path).name}:{n}"))
            out.records.append(canon)
    return out


def quarantine_entry(source: str, line: int | None, reason: str, text: str) -> dict:
    return {"source": str(source), "line": line, "reason": reason, "text": text.rstrip("\n")[:2000]}


def load_data(spec: str, use: Use, split: str = "train") -> Loaded:
    """A data spec -> canonical records. `split` picks the built-in split (files have none)."""
    if spec.startswith("builtin:"):
        from llmray.data.instruct import load_builtin

        # `group` (built-in preference pairs: how the wrong answer was made) lets stages report
        # held-out accuracy per kind of pair.
        return Loaded(records=[{**NORMALISE[use](r), "id": r["id"],
                                **({"group": r["rejection"]} if "rejection" in r else {})}
                               for r in load_builtin(spec[8:], split)])
    return read_jsonl(spec, use)


# Which built-in record forms each use accepts (chat records can serve as RL prompts).
ACCEPTS = {"chat": ("chat",), "pref": ("pref",), "prompt": ("prompt", "chat")}


def check_spec(spec: str, use: Use | None = None) -> str:
    """Validator helper for config fields: a known builtin of the right form, or a non-empty path."""
    if spec.startswith("builtin:"):
        from llmray.data.instruct import BUILTINS

        if spec[8:] not in BUILTINS:
            raise ValueError(f"unknown built-in data set {spec!r}; known: "
                             f"{['builtin:' + n for n in sorted(BUILTINS)]}")
        form = BUILTINS[spec[8:]][1]
        if use is not None and form not in ACCEPTS[use]:
            fits = sorted(n for n, (_, f) in BUILTINS.items() if f in ACCEPTS[use])
            raise ValueError(f"{spec!r} holds {form} records; this stage needs {use} data, e.g. "
                             f"{['builtin:' + n for n in fits]}")
    elif not spec.strip():
        raise ValueError("data must be 'builtin:<name>' or a path/glob of JSONL files")
    return spec


def write_jsonl(path: Path, records) -> Path:
    """One JSON object per line (UTF-8, parent folders made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_quarantine(entries: list[dict], out_dir: Path, name: str) -> Path | None:
    """Write quarantined records to `<out_dir>/quarantine/<name>.jsonl` (nothing when empty)."""
    return write_jsonl(Path(out_dir) / "quarantine" / f"{name}.jsonl", entries) if entries else None
