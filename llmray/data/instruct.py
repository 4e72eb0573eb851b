"""Built-in offline post-training data: stdlib questions derived deterministically from docstrings,
with the safety share of the harm taxonomy (llmray.data.harm) mixed in.

Data flow: `llmray.data.pydocs.iter_docs()` -> `entries()`: one record per documented public
function/class/method whose first docstring paragraph is a usable, unique summary -> split
BY MODULE (`split_of`: a sha256 bucket of the module name, so a test module never appears in
training) -> the sets below, each a list of plain dicts in the canonical forms that
`llmray.data.formats` also produces from user files. The safety records come from
`harm.phrasings(split)` (split by intent AND template, so test phrasings are unseen), an even spread
of them sized to `SAFETY_SHARE` of each mixed set (`_safety_share`), interleaved deterministically:

- `instruction_pairs(split)` (`builtin:qa`): {"id", "messages": [user question, assistant answer]}; the
  answer is the object's signature and the first paragraph of its real docstring.
- `instruct_mix(split)` (`builtin:instruct`): those, plus harmful requests answered by a refusal that
  names the category and their benign look-alikes answered helpfully.
- `preference_pairs(split)`: {"id", "prompt": [user], "chosen": str, "rejected": str,
  "rejection": how the wrong answer was made}. Stdlib pairs, four kinds in equal shares:
  `other`: the answer about ANOTHER object (another module, a few places away in summary
  length: a good answer to some other question); `scramble`: the right object and words in a
  garbled order; `repeat`: the right object, then its opening words looped (the degenerate
  repetition small models fall into); `typos`: the right answer with misspelt words. Safety pairs:
  `comply` (a harmful request: the refusal beats a compliant answer) and `overrefuse` (a look-alike:
  its answer beats a refusal). Lengths are matched, so "the longer answer wins" scores ~0.5
  (`length_baseline`). A tiny model learns the last three stdlib kinds from the text alone; `other`
  needs it to match the answer's name to the question's, which it learns only once it can copy names.
- `rl_prompts(split)`: {"id", "prompt": [user], "reference": answer, "harmful"?} for PPO/GRPO; the
  safety prompts' reference is the refusal or the look-alike's answer.
- `harmful_requests(split)` / `benign_requests(split)` / `safety_requests(split)`: the safety records
  alone. `is_refusal(text)` (the rule judge) lives in llmray.data.harm.

`BUILTINS` (llmray.data.builtin) names these for pipeline files; `load_builtin` reads one.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re

from llmray.data import harm
from llmray.data.harm import REFUSALS, is_refusal  # noqa: F401  (callers import them from here)

# Bump when any built-in set changes: the sft/reward/dpo kinds fold it into their VERSION, so
# cached stages trained on the old data rerun.
DATA_VERSION = "6"  # 4: the harm taxonomy (llmray.data.harm) in every set; builtin:qa; 5: contrastive pairs;
# 6: no memory addresses in signatures (the stdlib records differed between processes)
TEST_PERCENT = 20  # share of module buckets held out; ~15% of records land in test
MAX_SUMMARY_CHARS = 320
MAX_SIGNATURE_CHARS = 60
STDLIB_REJECTIONS = ("other", "scramble", "repeat", "typos")  # how a stdlib pair's wrong answer is made
SAFETY_REJECTIONS = ("comply", "overrefuse")  # a safety pair's: compliance with harm / refusal of a look-alike
REJECTIONS = STDLIB_REJECTIONS + SAFETY_REJECTIONS

QUESTION_TEMPLATES = (
    "What does `{name}` do?",
    "Explain `{name}` in one or two sentences.",
    "What is `{name}` for?",
    "Describe the Python API `{name}`.",
)


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def split_of(module: str) -> str:
    """'test' for held-out modules, else 'train' (stable across Python versions and machines)."""
    return "test" if _h(f"module-split:{module}") % 100 < TEST_PERCENT else "train"


_SIG_RE = re.compile(r"^[\w.]+\(.*\)( -> .*)?$|.* -> ")


def _summary(doc: str) -> str | None:
    """The first paragraph, one line, cut at a sentence end; None when it is not a usable answer."""
    paras = [" ".join(p.split()) for p in doc.strip().split("\n\n") if p.strip()]
    # Builtins often open with a signature paragraph ("perf_counter() -> float"): skip it.
    while paras and _SIG_RE.match(paras[0]):
        paras.pop(0)
    if not paras:
        return None
    para = paras[0]
    if len(para) > MAX_SUMMARY_CHARS:
        cut = para[:MAX_SUMMARY_CHARS]
        end = cut.rfind(". ")
        if end < 40:
            return None
        para = cut[: end + 1]
    words = para.split()
    # Signature-only or one-word docstrings ("staticmethod(function) -> method") answer nothing.
    if len(words) < 4 or not re.match(r"[A-Z]", para):
        return None
    return para


_DOCS_SCRIPT = (
    "import json, sys\n"
    "from llmray.data.pydocs import iter_docs\n"
    "keys = ('module', 'qualname', 'kind', 'signature', 'doc')\n"
    "json.dump([{k: r[k] for k in keys} for r in iter_docs() if r['kind'] != 'module'], sys.stdout)\n"
)


def _clean_docs() -> list[dict]:
    """`iter_docs()` run in a fresh interpreter.

    Libraries patch the stdlib when imported (transformers adds `logging.Logger.warning_once`,
    others wrap `inspect.getfile`), so the docstrings seen inside a process that imported them
    differ; a clean child process makes the data sets identical in every process."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _DOCS_SCRIPT], check=True, capture_output=True, text=True,
                         timeout=300)
    return json.loads(out.stdout)


@functools.cache
def entries() -> tuple[dict, ...]:
    """Documented stdlib objects with a unique usable summary, sorted by name."""
    raw = []
    for rec in _clean_docs():
        summary = _summary(rec["doc"])
        if summary is None:
            continue
        sig = rec["signature"]  # without memory addresses (llmray.data.pydocs._signature)
        sig = sig if len(sig) <= MAX_SIGNATURE_CHARS else "(...)"
        raw.append({"module": rec["module"], "name": f"{rec['module']}.{rec['qualname']}",
                    "kind": rec["kind"], "signature": sig, "summary": summary})
    counts: dict[str, int] = {}
    for e in raw:
        counts[e["summary"]] = counts.get(e["summary"], 0) + 1
    # Shared summaries ("Common base class for all non-exit exceptions.") make ambiguous pairs.
    uniq = [e for e in raw if counts[e["summary"]] == 1]
    return tuple(sorted(uniq, key=lambda e: e["name"]))


def _split_entries(split: str) -> list[dict]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return [e for e in entries() if split_of(e["module"]) == split]


def question(e: dict) -> str:
    return QUESTION_TEMPLATES[_h("q:" + e["name"]) % len(QUESTION_TEMPLATES)].format(name=e["name"])


def answer(e: dict, summary: str | None = None) -> str:
    sig = e["signature"] if e["kind"] != "class" else ""
    return f"`{e['name']}{sig}`: {summary if summary is not None else e['summary']}"


def instruction_pairs(split: str = "train") -> list[dict]:
    """Question about a stdlib object -> its signature and docstring summary."""
    return [{"id": f"instruct:{e['name']}", "messages": [{"role": "user", "content": question(e)},
                                                          {"role": "assistant", "content": answer(e)}]}
            for e in _split_entries(split)]


def _scramble(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(10):
        shuffled = words[:]
        rng.shuffle(shuffled)
        if shuffled != words:
            return " ".join(shuffled)
    return " ".join(reversed(words))


def _repeat(text: str) -> str:
    """The opening words looped to about the same length in characters (one word short or over,
    alternately, so length says nothing): the degenerate repetition small LMs produce."""
    words = text.split()
    head = words[: max(2, len(words) // 3)]
    looped: list[str] = []
    while len(" ".join(looped + [head[len(looped) % len(head)]])) <= len(text):
        looped.append(head[len(looped) % len(head)])
    if _h("repeat:" + text) % 2 or len(looped) < 2:
        looped.append(head[len(looped) % len(head)])
    return " ".join(looped) if looped != words else " ".join(reversed(words))


def _typos(text: str, rng: random.Random) -> str:
    """Swap two inner letters in about half the longer words (same length, same words, misspelt)."""
    words = text.split()
    long_ones = [i for i, w in enumerate(words) if len(w) >= 4 and w[1:-1].isalpha()]
    picked = [i for i in long_ones if rng.random() < 0.5] or long_ones[:2]
    for i in picked:
        w = words[i]
        j = rng.randrange(1, len(w) - 2)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    out = " ".join(words)
    return out if out != text else _scramble(text, rng)


def _swap_partner(e: dict, pool: list[dict]) -> dict:
    """An entry from ANOTHER module, a few places away in length order (deterministic).

    Stepping up or down by the same rule keeps 'longer answer wins' at about 0.5.
    """
    i = next(k for k, p in enumerate(pool) if p is e)
    h = _h("swap:" + e["name"])
    sign = 1 if h % 2 else -1
    for step in range(1 + (h >> 1) % 4, len(pool)):
        for j in (i + sign * step, i - sign * step):
            if 0 <= j < len(pool) and pool[j]["module"] != e["module"]:
                return pool[j]
    raise ValueError("preference pairs need at least two modules in a split")


def preference_pairs(split: str = "train") -> list[dict]:
    """(question, right answer, wrong answer of about the same length) for RM and DPO."""
    ents = _split_entries(split)
    pool = sorted(ents, key=lambda p: (len(p["summary"]), p["name"]))
    out = []
    for e in ents:
        rng = random.Random(_h("pref:" + e["name"]))
        how = STDLIB_REJECTIONS[_h("how:" + e["name"]) % len(STDLIB_REJECTIONS)]
        if how == "other":
            wrong = answer(_swap_partner(e, pool))
        elif how == "repeat":
            wrong = answer(e, _repeat(e["summary"]))
        elif how == "typos":
            wrong = answer(e, _typos(e["summary"], rng))
        else:
            wrong = answer(e, _scramble(e["summary"], rng))
        out.append({"id": f"pref:{e['name']}", "prompt": [{"role": "user", "content": question(e)}],
                    "chosen": answer(e), "rejected": wrong, "rejection": how})
    return _interleave(out, _safety_preferences(split, len(out)))


def length_baseline(pairs: list[dict]) -> float:
    """Accuracy of 'the longer answer is better' (ties count half): ~0.5 means length says nothing."""
    score = 0.0
    for p in pairs:
        a, b = len(p["chosen"]), len(p["rejected"])
        score += 1.0 if a > b else 0.5 if a == b else 0.0
    return score / max(1, len(pairs))


def rl_prompts(split: str = "test") -> list[dict]:
    """Prompts (user turn only) with the reference answer, for PPO/GRPO rollouts and evaluation: the
    stdlib questions and the safety share (harmful phrasings: the refusal; look-alikes: the answer)."""
    qa = [{"id": f"prompt:{e['name']}", "prompt": [{"role": "user", "content": question(e)}],
           "reference": answer(e)} for e in _split_entries(split)]
    return _interleave(qa, _safety_prompts(split, len(qa)))


# ---------------------------------------------------------------- safety sets (llmray.data.harm)
SAFETY_SHARE = 0.2  # share of safety records in builtin:instruct, builtin:prefs and builtin:prompts


def harmful_requests(split: str = "train") -> list[dict]:
    """Every harmful intent of the split in every request template of the split, answered with a refusal
    that names its category: {"id", "harmful": True, "harm": category, "messages"}."""
    return [{"id": f"harmful:{h['id']}:{t}", "harmful": True, "harm": h["harm"],
             "messages": [{"role": "user", "content": harm.request(h["intent"], t)},
                          {"role": "assistant", "content": harm.refusal(h["harm"], split, f"{h['id']}:{t}")}]}
            for h in harm.harmful_intents(split) for t in harm.templates(split)]


def benign_requests(split: str = "train") -> list[dict]:
    """Every benign look-alike of the split in every request template of the split, answered helpfully."""
    return [{"id": f"benign:{b['id']}:{t}", "harmful": False, "harm": b["harm"],
             "messages": [{"role": "user", "content": harm.request(b["intent"], t)},
                          {"role": "assistant", "content": b["answer"]}]}
            for b in harm.lookalikes(split) for t in harm.templates(split)]


def safety_requests(split: str = "train") -> list[dict]:
    """The split's harmful phrasings (plain, jailbreak, injection: refused) each followed by its benign
    mirror (the same phrasing of a look-alike: answered), as chat records."""
    return [{"id": f"safety:{p['id']}", "harmful": p["harmful"], "harm": p["harm"],
             "messages": [{"role": "user", "content": p["text"]}, {"role": "assistant", "content": p["answer"]}]}
            for p in harm.phrasings(split)]


def _safety_share(split: str, n_other: int) -> list[dict]:
    """An even spread of the split's (harmful, benign mirror) phrasing pairs, sized so that they make
    `SAFETY_SHARE` of a set whose other `n_other` records are stdlib ones."""
    by_intent: dict[str, list[list[dict]]] = {}
    phr = harm.phrasings(split)
    for i in range(0, len(phr), 2):
        by_intent.setdefault(phr[i]["intent"], []).append(phr[i:i + 2])
    groups = list(by_intent.values())
    n = min(len(phr) // 2, round(n_other * SAFETY_SHARE / (1 - SAFETY_SHARE) / 2))
    out = []
    for rank, slots in enumerate(groups):
        # Every intent, and its slots (templates, jailbreak, injection) in turn from a rotating start.
        k = n // len(groups) + (rank < n % len(groups))
        for j in range(k):
            out += slots[(rank + j) % len(slots)]
    return out


def _interleave(main: list, extra: list) -> list:
    """`extra` spread evenly through `main` (deterministic)."""
    out, j = [], 0
    for i, rec in enumerate(main):
        out.append(rec)
        while j < len(extra) and (j + 1) * len(main) <= (i + 1) * len(extra):
            out.append(extra[j])
            j += 1
    return out + extra[j:]


def instruct_mix(split: str = "train") -> list[dict]:
    """`builtin:instruct`: the stdlib questions with the safety share of refusals (harmful requests) and
    helpful answers (their look-alikes) spread through them."""
    qa = instruction_pairs(split)
    safety = [{"id": f"instruct:safety:{p['id']}", "messages": [{"role": "user", "content": p["text"]},
                                                          {"role": "assistant", "content": p["answer"]}]}
              for p in _safety_share(split, len(qa))]
    return _interleave(qa, safety)


def _safety_preferences(split: str, n_other: int) -> list[dict]:
    """Harmful: the refusal over a compliant answer (`comply`); look-alike: its answer over a refusal
    (`overrefuse`, penalising over-refusal). The wrong side is fitted to the right one's length."""
    out = []
    for i, p in enumerate(_safety_share(split, n_other)):
        # Harmful and benign records alternate: every other pair of each kind gets the longer wrong answer.
        longer = (i // 2) % 2 == 0
        if p["harmful"]:
            wrong, how = harm.comply(p["intent"], len(p["answer"]), longer), "comply"
        else:
            wrong, how = harm.overrefusal(p["harm"], split, len(p["answer"]), p["id"], longer), "overrefuse"
        out.append({"id": f"pref:{p['id']}", "prompt": [{"role": "user", "content": p["text"]}],
                    "chosen": p["answer"], "rejected": wrong, "rejection": how})
    return out


def _safety_prompts(split: str, n_other: int) -> list[dict]:
    return [{"id": f"prompt:{p['id']}", "prompt": [{"role": "user", "content": p["text"]}], "reference": p["answer"],
             "harmful": p["harmful"]} for p in _safety_share(split, n_other)]
