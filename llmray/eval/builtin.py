"""Makes the built-in lm-eval tasks' data files (run offline: `python -m llmray.eval.builtin`).

Every item comes from the HELD-OUT split of the built-in stdlib data: objects of the modules that
`llmray.data.instruct.split_of` puts in `test`, whose question/answer pairs no sft, reward, dpo or RL
stage trains on. (The pretraining corpus `python-docs` reads every module's docstrings; the eval
stage's contamination check against the curated corpora reports exactly that, see docs/stages/eval.md.)

Data flow: `instruct.entries()` (unique usable summaries) + `instruct._clean_docs()` (full docstrings)
--test split, sorted by a sha256 of the name, first N--> three JSONL files in `llmray/eval/tasks/`,
read by `tasks/loader.py` through each task YAML's `custom_dataset`:
- `docmatch.jsonl` (multiple choice, log-likelihood): "`name(signature)`:" -> its docstring summary among
  three other held-out summaries of the same object kind, the right one at a hashed position;
- `docppl.jsonl` (loglikelihood_rolling): full held-out docstrings, cut at a paragraph end;
- `signature.jsonl` (generate_until, exact match): the sft data's own question about a held-out object ->
  the answer's opening code span "`name(signature)`".
The files are committed, so every machine scores the same items whatever its Python's docstrings.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
N_DOCMATCH, N_DOCPPL, N_SIGNATURE = 200, 100, 150
MAX_PPL_CHARS = 1200
BUILTIN_TASKS = ("llmray_docmatch", "llmray_docppl", "llmray_signature")
BUILTIN_TAG = "llmray"


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def _ordered(items: list[dict], key: str, salt: str) -> list[dict]:
    return sorted(items, key=lambda e: (_h(f"{salt}:{e[key]}"), e[key]))


def docmatch_items(entries: list[dict], n: int = N_DOCMATCH) -> list[dict]:
    """Which summary belongs to this signature? Four choices of the same object kind."""
    by_kind: dict[str, list[dict]] = {}
    for e in entries:
        by_kind.setdefault(e["kind"], []).append(e)
    out = []
    for e in _ordered(entries, "name", "docmatch")[:n]:
        pool = [o for o in by_kind[e["kind"]] if o["name"] != e["name"]]
        if len(pool) < 3:
            pool = [o for o in entries if o["name"] != e["name"]]
        rng = random.Random(_h("distractors:" + e["name"]))
        choices = [o["summary"] for o in rng.sample(sorted(pool, key=lambda o: o["name"]), 3)]
        label = _h("label:" + e["name"]) % 4
        choices.insert(label, e["summary"])
        sig = e["signature"] if e["kind"] != "class" else ""
        out.append({"id": e["name"], "query": f"`{e['name']}{sig}`:", "choices": choices, "label": label})
    return out


def _cut(doc: str, limit: int = MAX_PPL_CHARS) -> str:
    paras, text = doc.strip().split("\n\n"), ""
    for p in paras:
        if text and len(text) + 2 + len(p) > limit:
            break
        text = f"{text}\n\n{p}" if text else p
    return text[:limit]


def docppl_items(docs: list[dict], n: int = N_DOCPPL) -> list[dict]:
    """Full held-out docstrings for rolling log-likelihood (perplexity)."""
    recs = [{"id": f"{d['module']}.{d['qualname']}", "text": _cut(d["doc"])} for d in docs]
    recs = [r for r in recs if len(r["text"].split()) >= 20]
    return _ordered(recs, "id", "docppl")[:n]


def signature_items(entries: list[dict], n: int = N_SIGNATURE) -> list[dict]:
    """The sft question about an object -> the code span its answer opens with."""
    from llmray.data.instruct import question

    funcs = [e for e in entries if e["kind"] != "class" and e["signature"] != "(...)"]
    return [{"id": e["name"], "question": question(e), "target": f"`{e['name']}{e['signature']}`"}
            for e in _ordered(funcs, "name", "signature")[:n]]


def build(out_dir: Path = TASKS_DIR) -> dict[str, int]:
    """Write the three data files; returns item counts."""
    from llmray.data.instruct import _clean_docs, entries, split_of

    held = [e for e in entries() if split_of(e["module"]) == "test"]
    docs = [d for d in _clean_docs() if split_of(d["module"]) == "test"]
    sets = {"docmatch": docmatch_items(held), "docppl": docppl_items(docs), "signature": signature_items(held)}
    for name, rows in sets.items():
        with (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return {k: len(v) for k, v in sets.items()}


if __name__ == "__main__":
    print(build())
