"""Answer quality per model on held-out "what does this function do" questions.

Data flow:
  `llmray.data.instruct.rl_prompts("test")` (held-out stdlib APIs: a question + its reference answer,
    the signature and docstring summary) --plain questions only, `n` picked by a hash of the id
    (deterministic, the same prompts for every model)--> `question_set`
  each model's greedy answers (the align stage generates them with the red-team suite, through the
    generation layer's batch engine, llmray.generate.HFGenerator, and the folder's generation config,
    the same defaults a served model decodes with) --`score_answers`--> per model:
    word_f1          mean SQuAD-style word F1 against the reference (lower-case, punctuation incl.
                     backticks and articles removed, bag-of-words overlap)
    distinct_2       distinct word bigrams / all word bigrams over the model's answers
    degenerate_rate  share of answers repeating a word 4-gram (the loops small LMs fall into),
                     with its 95% Wilson interval
    mean_words       mean answer length in words
  and one record per question (`answers/<model>.jsonl`).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter

from llmray.data.instruct import is_refusal, rl_prompts
from llmray.rlhf.rewards import wilson_interval

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = {"a", "an", "the"}


def question_set(n: int, split: str = "test") -> list[dict]:
    """Up to n plain question records {"id", "prompt": [user turn], "reference"}, chosen by a hash
    of the id (stable when records are added elsewhere in the split)."""
    # The safety share of the prompts (harmful phrasings and their look-alikes) carries `harmful`:
    # the red-team suite measures those; here only the stdlib questions.
    plain = [r for r in rl_prompts(split)
             if "harmful" not in r and "harm" not in r and isinstance(r.get("reference"), str)
             and r["reference"].strip() and not is_refusal(r["reference"])]
    plain.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    return plain[:n]


def words(text: str) -> list[str]:
    """Lower-case words with punctuation (backticks included) removed."""
    return _PUNCT.sub(" ", text.lower()).split()


def word_f1(prediction: str, reference: str) -> float:
    """SQuAD word F1: harmonic mean of bag-of-words precision and recall, articles dropped."""
    pred = [w for w in words(prediction) if w not in _ARTICLES]
    ref = [w for w in words(reference) if w not in _ARTICLES]
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Distinct word n-grams / all word n-grams over the texts (None: no n-gram at all)."""
    grams = [tuple(ws[i:i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def degenerate(text: str, n: int = 4) -> bool:
    """Does some word n-gram occur twice in the text?"""
    ws = words(text)
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return len(set(grams)) < len(grams)


def score_answers(questions: list[dict], responses: list[str]) -> tuple[dict, list[dict]]:
    """(summary figures, one record per question) for one model's answers."""
    if len(questions) != len(responses):
        raise ValueError(f"{len(responses)} answers for {len(questions)} questions")
    recs = [{"id": q["id"], "prompt": q["prompt"][-1]["content"], "reference": q["reference"], "response": a,
             "word_f1": round(word_f1(a, q["reference"]), 4), "degenerate": degenerate(a),
             "words": len(words(a))} for q, a in zip(questions, responses)]
    n = len(recs)
    bad = sum(r["degenerate"] for r in recs)
    d2 = distinct_n(responses)
    summary = {"n": n, "word_f1": round(sum(r["word_f1"] for r in recs) / n, 4) if n else None,
               "distinct_2": round(d2, 4) if d2 is not None else None,
               "degenerate": bad, "degenerate_rate": round(bad / n, 4) if n else None,
               "degenerate_rate_ci": [round(x, 4) for x in wilson_interval(bad, n)] if n else None,
               "mean_words": round(sum(r["words"] for r in recs) / n, 2) if n else None}
    return summary, recs
