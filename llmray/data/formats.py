"""Reading the post-training data users already have, with malformed records quarantined.

A data spec is `builtin:<name>` (see `llmray.data.builtin.BUILTINS`) or files in the formats
`llmray.data.readers` streams (JSON Lines, plain or .gz/.zst; Parquet; `datasets` save_to_disk
folders; folders and globs of those; local or object-store URIs). Every record is normalised to
one canonical form per use, whatever layout it came in:

- "chat" (SFT): {"id", "messages": [{"role", "content"}, ...]} from OpenAI `{"messages": [...]}`,
  ShareGPT `{"conversations": [{"from", "value"}, ...]}` (roles human/user, gpt/assistant/model,
  system), Alpaca `{"instruction", "input"?, "output"}`, or `{"prompt", "completion"}` (the last
  two take an optional `system` string).
- "pref" (reward, DPO): {"id", "prompt": [messages], "chosen": str, "rejected": str} from
  `{"prompt", "chosen", "rejected"}` where each is a string or a message list (TRL /
  UltraFeedback style: chosen/rejected may repeat the prompt turns; the shared prefix is cut).
- "prompt" (RL): {"id", "prompt": [messages], "reference"?, "harmful"?} from `{"prompt": str | messages}`
  (a boolean `harmful` is kept), a conversation ending in a user turn, or a chat record (its last
  assistant turn becomes the reference).
Other layouts come in through a `fields:` mapping {canonical name: the dataset's field}, applied
before recognition (`check_fields` validates it at config time).

Data flow: spec --readers.iter_raw (one record at a time)--> None-valued fields dropped (columnar
files fill absent fields with null) --`fields:` renames--> normalise_<use> --> canonical record,
or a quarantine entry {"source", "line", "reason", "text"} handed to the caller's sink (`Quarantine`
streams them to `<stage>/quarantine/<name>.jsonl`; stages report `metrics.quarantined`). Nothing is
silently dropped and nothing raises on a bad record; a data set in which NO record has recognisable
fields raises `DataError` naming the field and the fields seen (after `EARLY_FAIL` records, or at
its end). `split_records` splits a spec into train / held-out records, the one rule every kind uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Use = Literal["chat", "pref", "prompt"]
ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                "model": "assistant"}
# The names a `fields:` mapping may map to (what the normalisers read).
CANONICAL = ("id", "messages", "conversations", "system", "instruction", "input", "output", "prompt",
             "completion", "chosen", "rejected", "reference", "harmful")
LAYOUTS = {"chat": "'messages', 'conversations', 'instruction'+'output' or 'prompt'+'completion'",
           "pref": "'prompt'+'chosen'+'rejected' (or 'chosen'+'rejected' conversations)",
           "prompt": "'prompt', 'messages', 'conversations', 'instruction' or 'prompt'+'completion'"}
EARLY_FAIL = 1000  # this many unrecognisable records before any usable one: the layout is not known
SEEN_FIELDS = 40  # field names listed in a DataError


class Malformed(ValueError):
    """A record that cannot be used; the message is the quarantine reason."""


class Unrecognised(Malformed):
    """A record with none of the fields of a known layout (a `fields:` mapping may be missing)."""


class DataError(ValueError):
    """A data set that cannot be used at all (no record has recognisable fields)."""


@dataclass
class Loaded:
    records: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- normalisers


def _fields_seen(rec: dict) -> str:
    return f"fields: {sorted(rec)[:SEEN_FIELDS]}"


def _messages(value, what: str) -> list[dict]:
    """OpenAI {"role", "content"} or ShareGPT {"from", "value"} turns -> [{"role", "content"}]."""
    if not isinstance(value, list) or not value:
        raise Malformed(f"{what} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise Malformed(f"{what}[{i}] must be an object with 'role' and 'content' (or 'from' and 'value')")
        role, content = (m.get("role"), m.get("content")) if "role" in m else (m.get("from"), m.get("value"))
        if role is None:
            raise Malformed(f"{what}[{i}] must be an object with 'role' and 'content' (or 'from' and 'value')")
        if role not in ROLE_ALIASES:
            raise Malformed(f"{what}[{i}] has unknown role {role!r} (expected one of {list(ROLE_ALIASES)})")
        if not isinstance(content, str):
            raise Malformed(f"{what}[{i}].content must be a string")
        out.append({"role": ROLE_ALIASES[role], "content": content})
    return out


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"{what} must be a non-empty string")
    return value


def _system(rec: dict) -> list[dict]:
    """An optional `system` string as a leading system turn."""
    sys_ = rec.get("system")
    return [{"role": "system", "content": sys_}] if isinstance(sys_, str) and sys_.strip() else []


def _conversation(rec: dict) -> list[dict] | None:
    for key in ("messages", "conversations"):
        if key in rec:
            return _messages(rec[key], key)
    return None


def normalise_chat(rec: dict) -> dict:
    """messages / ShareGPT / Alpaca / prompt-completion -> {"messages": [...]} with an assistant turn."""
    msgs = _conversation(rec)
    if msgs is not None:
        pass
    elif "instruction" in rec and "output" in rec:
        extra = rec.get("input") or ""
        if not isinstance(extra, str):
            raise Malformed("input must be a string")
        user = _text(rec["instruction"], "instruction") + (f"\n\n{extra}" if extra.strip() else "")
        msgs = [*_system(rec), {"role": "user", "content": user},
                {"role": "assistant", "content": _text(rec["output"], "output")}]
    elif "prompt" in rec and "completion" in rec:
        msgs = [*_system(rec), {"role": "user", "content": _text(rec["prompt"], "prompt")},
                {"role": "assistant", "content": _text(rec["completion"], "completion")}]
    elif any(k in rec for k in ("instruction", "output", "prompt", "completion")):
        raise Malformed(f"not a chat record: expected {LAYOUTS['chat']} ({_fields_seen(rec)})")
    else:
        raise Unrecognised(f"not a chat record: expected {LAYOUTS['chat']} ({_fields_seen(rec)})")
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


def _prompt_turns(p, rec: dict) -> list[dict]:
    return [*_system(rec), {"role": "user", "content": _text(p, "prompt")}] if isinstance(p, str) \
        else _messages(p, "prompt")


def normalise_pref(rec: dict) -> dict:
    """{"prompt", "chosen", "rejected"} in string or message-list form -> canonical pair."""
    missing = [k for k in ("chosen", "rejected") if k not in rec]
    if len(missing) == 2:
        raise Unrecognised(f"not a preference pair: expected {LAYOUTS['pref']} ({_fields_seen(rec)})")
    if missing:
        raise Malformed(f"missing field(s) {missing}")
    if "prompt" in rec:
        prompt = _prompt_turns(rec["prompt"], rec)
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
    """{"prompt": str | messages}, a conversation ending in a user turn, or a chat record ->
    {"prompt": [...], "reference"?, "harmful"?}."""
    if "prompt" in rec and "completion" not in rec:
        out = {"prompt": _prompt_turns(rec["prompt"], rec)}
    else:
        msgs = _conversation(rec)
        if msgs is not None and msgs[-1]["role"] == "user":
            out = {"prompt": msgs}
        elif "instruction" in rec and "output" not in rec:
            out = {"prompt": _prompt_turns(rec["instruction"], rec)}
        else:
            msgs = normalise_chat(rec)["messages"]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            if last == 0:
                raise Malformed("a chat record used as a prompt needs a turn before the assistant reply")
            return {"prompt": msgs[:last], "reference": msgs[last]["content"]}
    if isinstance(rec.get("reference"), str):
        out["reference"] = rec["reference"]
    if isinstance(rec.get("harmful"), bool):  # red-team prompts: lets a constitution stage check its judge
        out["harmful"] = rec["harmful"]
    return out


NORMALISE = {"chat": normalise_chat, "pref": normalise_pref, "prompt": normalise_prompt}


# ---------------------------------------------------------------- field mapping


def check_fields(fields: dict[str, str]) -> dict[str, str]:
    """Validator helper for a `fields:` mapping {canonical name: the dataset's field name}."""
    unknown = sorted(set(fields) - set(CANONICAL))
    if unknown:
        raise ValueError(f"unknown canonical field(s) {unknown}; a mapping goes from one of {list(CANONICAL)} "
                         "to your data's field name, e.g. {prompt: question, completion: answer}")
    bad = [k for k, v in fields.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"fields {bad}: each must map to a non-empty field name of the data")
    return fields


def apply_fields(rec: dict, fields: dict[str, str]) -> dict:
    """The record with each mapped field renamed to its canonical name (absent ones left absent)."""
    if not fields:
        return rec
    sources = set(fields.values())
    out = {k: v for k, v in rec.items() if k not in sources and k not in fields}
    for canon, src in fields.items():
        if src in rec:
            out[canon] = rec[src]
    return out


# ---------------------------------------------------------------- reading


def quarantine_entry(source: str, line: int | None, reason: str, text: str) -> dict:
    return {"source": str(source), "line": line, "reason": reason, "text": text.rstrip("\n")[:2000]}


def iter_records(spec: str, use: Use, split: str = "train", fields: dict[str, str] | None = None,
                 on_bad: Callable[[dict], None] | None = None, what: str = "data") -> Iterator[dict]:
    """Canonical records of `spec`, streamed; each bad record goes to `on_bad` as a quarantine entry.
    `split` picks the built-in's split, or a DatasetDict folder's ("test": its held-out split).
    `what` is the config field the spec came from, for errors. Raises DataError when no record is
    recognisable (see the module docstring)."""
    if spec.startswith("builtin:"):
        yield from _builtin(spec, use, split)
        return
    from llmray.data.readers import iter_raw, raw_text

    norm, on_bad = NORMALISE[use], on_bad or (lambda _entry: None)
    ok = unrecognised = 0
    seen: set[str] = set()
    for raw in iter_raw(spec, split):
        try:
            if raw.error:
                raise Malformed(raw.error)
            if not isinstance(raw.record, dict):
                raise Malformed(f"a record must be a JSON object, got {type(raw.record).__name__}")
            rec = apply_fields({k: v for k, v in raw.record.items() if v is not None}, fields or {})
            canon = norm(rec)
        except Unrecognised as e:
            unrecognised += 1
            if len(seen) < SEEN_FIELDS:
                seen.update(raw.record)
            on_bad(quarantine_entry(raw.source, raw.line, str(e), raw_text(raw)))
            if not ok and unrecognised >= EARLY_FAIL:
                raise _nothing_recognised(spec, use, what, seen, fields) from None
            continue
        except Malformed as e:
            on_bad(quarantine_entry(raw.source, raw.line, str(e), raw_text(raw)))
            continue
        canon["id"] = str(rec.get("id", f"{Path(raw.source).name}:{raw.line}"))
        ok += 1
        yield canon
    if not ok and unrecognised:
        raise _nothing_recognised(spec, use, what, seen, fields)


def _nothing_recognised(spec, use, what, seen, fields) -> DataError:
    mapped = f" with fields {fields}" if fields else ""
    return DataError(f"{what}: no record of {spec!r}{mapped} has recognisable {use} fields (fields seen: "
                     f"{sorted(seen)[:SEEN_FIELDS]}); expected {LAYOUTS[use]}, or map yours with `fields:`, "
                     "e.g. fields: {prompt: question, completion: answer}")


def _builtin(spec: str, use: Use, split: str) -> Iterator[dict]:
    from llmray.data.builtin import load_builtin

    # `group` (built-in preference pairs: how the wrong answer was made) lets stages report
    # held-out accuracy per kind of pair.
    for r in load_builtin(spec[8:], split):
        yield {**NORMALISE[use](r), "id": r["id"], **({"group": r["rejection"]} if "rejection" in r else {})}


def load_data(spec: str, use: Use, split: str = "train", fields: dict[str, str] | None = None,
              what: str = "data") -> Loaded:
    """All canonical records of a spec in memory, for small sets (prompts); `iter_records` streams."""
    out = Loaded()
    out.records = list(iter_records(spec, use, split, fields, out.quarantined.append, what))
    return out


# ---------------------------------------------------------------- splits


def held_out(record_id: str, fraction: float) -> bool:
    """Whether a record belongs to the held-out share `fraction`, by a hash of its id (stable across runs)."""
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def has_heldout_split(spec: str) -> bool:
    """A built-in, or a DatasetDict folder with a test/validation split: held-out records come with it."""
    if spec.startswith("builtin:"):
        return True
    from llmray.data.readers import HELDOUT_SPLITS, splits_of

    return any(s in HELDOUT_SPLITS for s in splits_of(spec) or [])


def split_records(data: str, eval_data: str | None, use: Use, fraction: float, fields: dict[str, str] | None,
                  on_bad: Callable[[dict], None], what: tuple[str, str] = ("data", "eval_data"),
                  only_heldout: bool = False) -> Iterator[tuple[str, dict]]:
    """("train" | "test", record) for every record: held-out ones from `eval_data`, else from the data's
    own held-out split (built-ins, DatasetDict folders), else a `fraction` of `data` by id hash.
    With an explicit held-out source, all train records come first. `only_heldout`: skip reading
    the train records where they come from another source."""
    if eval_data or has_heldout_split(data):
        if not only_heldout:
            for rec in iter_records(data, use, "train", fields, on_bad, what[0]):
                yield "train", rec
        src, name = (eval_data, what[1]) if eval_data else (data, what[0])
        for rec in iter_records(src, use, "test", fields, on_bad, name):
            yield "test", rec
        return
    for rec in iter_records(data, use, "train", fields, on_bad, what[0]):
        yield ("test" if held_out(rec["id"], fraction) else "train"), rec


# ---------------------------------------------------------------- config checks


# Which built-in record forms each use accepts (chat records can serve as RL prompts).
ACCEPTS = {"chat": ("chat",), "pref": ("pref",), "prompt": ("prompt", "chat")}


def check_spec(spec: str, use: Use | None = None) -> str:
    """Validator helper for config fields: a known builtin of the right form, an existing local
    file / folder / glob, or an object-store URI pyarrow.fs can parse (not opened: no network here)."""
    if spec.startswith("builtin:"):
        from llmray.data.builtin import BUILTINS

        if spec[8:] not in BUILTINS:
            raise ValueError(f"unknown built-in data set {spec!r}; known: "
                             f"{['builtin:' + n for n in sorted(BUILTINS)]}")
        form = BUILTINS[spec[8:]][1]
        if use is not None and form not in ACCEPTS[use]:
            fits = sorted(n for n, (_, f) in BUILTINS.items() if f in ACCEPTS[use])
            raise ValueError(f"{spec!r} holds {form} records; this stage needs {use} data, e.g. "
                             f"{['builtin:' + n for n in fits]}")
    elif not spec.strip():
        raise ValueError("must be 'builtin:<name>', a file / folder / glob of JSONL, Parquet or `datasets` "
                         "data, or an object-store URI")
    else:
        from llmray.data.readers import check_local

        check_local(spec)
    return spec


# ---------------------------------------------------------------- writing


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


class Quarantine:
    """A sink for quarantine entries that streams them to `<out_dir>/quarantine/<name>.jsonl` (the file
    appears with the first entry) and counts them, so a large bad share costs no driver memory."""

    def __init__(self, out_dir: Path, name: str):
        self.path = Path(out_dir) / "quarantine" / f"{name}.jsonl"
        self.count, self._f = 0, None

    def __call__(self, entry: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.path.open("w", encoding="utf-8")
        self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
