"""Built-in verifiable prompts (`builtin:arithmetic`): small arithmetic questions with checkable answers.

For RL with programmable rewards (RLVR): every record is a prompt with a `reference` answer that
`llmray.rlhf.rewards:exact_match` checks, and the prompt asks for the `Answer: <number>` format
that `llmray.rlhf.rewards:format_check` checks.

Data flow: every problem of a fixed universe (`_universe`: additions a + b with a <= b < 100,
multiplications a * b with 2 <= a <= b <= 20, and one-step word problems) -> split by a sha256 bucket
of the problem's canonical key (`split_of`; the operands sorted for the commutative ops, and only
a <= b generated: train and test share no problem, even reordered) -> a seeded shuffle
of each kind of problem in the split, taken in turns (kinds balanced until one runs out), cut to
TRAIN_SIZE / TEST_SIZE -> records
{"id": "arith:<key>", "prompt": [user turn], "reference": "<integer>"} (the canonical "prompt"
form of `llmray.data.formats`). Deterministic across machines and Python versions.
"""

from __future__ import annotations

import hashlib
import random

VERSION = "1"  # bump when the generated set changes (fingerprints of the stages reading it)
TEST_PERCENT = 10
TRAIN_SIZE = 2000
TEST_SIZE = 200
INSTRUCTION = "End your reply with 'Answer: <number>'."

_NAMES = ("Ada", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo")
_THINGS = ("apples", "books", "coins", "marbles", "stamps", "pencils")
# (template, how the answer is computed); {n}: a name, {t}: a thing, {a}, {b}: operands.
_WORD = (
    ("{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?", "add"),
    ("{n} has {a} {t} and gives away {b}. How many {t} are left?", "sub"),
    ("{n} buys {a} bags with {b} {t} in each. How many {t} is that in total?", "mul"),
)


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def split_of(key: str) -> str:
    """'test' for about TEST_PERCENT% of problem keys, else 'train'."""
    return "test" if _h(f"arith-split:{key}") % 100 < TEST_PERCENT else "train"


def _universe() -> list[tuple[str, str, int]]:
    """(canonical key, question, answer) of every problem, in a fixed order."""
    out = []
    for a in range(100):
        for b in range(a, 100):
            out.append((f"add:{a}:{b}", f"What is {a} + {b}?", a + b))
    for a in range(2, 21):
        for b in range(a, 21):
            out.append((f"mul:{a}:{b}", f"What is {a} * {b}?", a * b))
    for w, (template, op) in enumerate(_WORD):
        for a in range(2, 20):
            for b in range(1, a if op == "sub" else 10):
                n, t = _NAMES[(a + b + w) % len(_NAMES)], _THINGS[(a * b + w) % len(_THINGS)]
                answer = a + b if op == "add" else a - b if op == "sub" else a * b
                out.append((f"word{w}:{a}:{b}", template.format(n=n, t=t, a=a, b=b), answer))
    return out


def arithmetic_prompts(split: str = "train") -> list[dict]:
    """The split's problems as RL prompt records with a `reference` answer (see the module docstring)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"arithmetic:{split}")
    kinds: dict[str, list] = {}
    for p in _universe():
        if split_of(p[0]) == split:
            kinds.setdefault(p[0].split(":")[0], []).append(p)
    for group in kinds.values():
        rng.shuffle(group)
    # round-robin over the kinds, so additions (the most numerous) do not crowd out the rest
    pool = [g[i] for i in range(max(map(len, kinds.values()))) for g in kinds.values() if i < len(g)]
    size = TRAIN_SIZE if split == "train" else TEST_SIZE
    return [{"id": f"arith:{key}", "prompt": [{"role": "user", "content": f"{q} {INSTRUCTION}"}],
             "reference": str(answer)} for key, q, answer in pool[:size]]
