"""Makes the built-in quality seed set `data/quality_seed.jsonl` (run offline: `python -m llmray.curate.seed`).

Positives (label 1): documentation prose -- docstrings of a fixed list of standard-library modules,
at least 25 words, cut at 1,500 characters. Negatives (label 0): generated web junk of ten kinds
(keyword spam, navigation menus, cookie/legal banners, lorem ipsum, character soup, word salad made
by shuffling the positives' words, click-bait, repeated lines, tag lists, log dumps), from a fixed
random seed. The file is committed; the generator is kept so the set can be inspected and rebuilt.
It is a seed for a small default model, not a benchmark: train on your own labelled data for real use.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

MODULES = ("argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "datetime",
           "decimal", "difflib", "email", "enum", "fractions", "functools", "gzip", "hashlib", "heapq", "html",
           "http", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math", "pathlib",
           "pickle", "queue", "random", "re", "sched", "secrets", "shutil", "socket", "sqlite3", "statistics",
           "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib",
           "uuid", "zipfile")
N_EACH = 300

_PRODUCTS = ["shoes", "watches", "phones", "laptops", "viagra", "pills", "loans", "insurance", "bags", "jerseys",
             "sunglasses", "followers", "likes", "essays", "casino bonus", "crypto", "forex signals", "diet pills"]
_SPAM = ["best", "cheap", "buy", "discount", "online", "free shipping", "sale", "top", "official", "outlet",
         "wholesale", "lowest price", "order now", "limited offer", "100% genuine", "no prescription", "fast"]
_CITIES = ["new york", "london", "dubai", "paris", "sydney", "toronto", "mumbai", "berlin", "tokyo"]
_MENU = ["Home", "About Us", "Products", "Services", "Blog", "Contact", "Login", "Register", "Cart (0)", "FAQ",
         "Careers", "Sitemap", "Privacy Policy", "Terms of Use", "Shop", "News", "Support", "My Account", "Search"]
_LEGAL = ["We use cookies to improve your experience.", "By continuing to browse you agree to our use of cookies.",
          "Accept all cookies.", "Manage preferences.", "All rights reserved.", "Copyright 2024.",
          "Read our Privacy Policy and Terms of Use.", "This site uses cookies for analytics and ads.",
          "Subscribe to our newsletter.", "Powered by WordPress.", "Back to top.", "Share this page."]
_LOREM = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "ut", "enim", "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi"]
_CLICK = ["CLICK HERE", "You won't believe what happened next!!!", "Doctors hate this one trick", "FREE FREE FREE",
          "Subscribe, like and share!", "Follow us on Facebook Twitter Instagram", "WIN an iPhone now",
          "Limited time only!!!", "Act now before it's gone", "100% FREE no credit card", "Hot singles near you"]
_TAGS = ["free download", "full version", "crack", "keygen", "serial", "torrent", "mp3", "hd", "1080p", "apk",
         "mod", "hack", "cheats", "unlimited", "2024", "latest", "windows 10", "mac", "no virus", "working"]


def positives(limit: int = N_EACH) -> list[str]:
    from llmray.data.pydocs import iter_docs

    out = []
    for rec in iter_docs(modules=list(MODULES)):
        text = rec["doc"]
        if len(text.split()) >= 25:
            out.append(text[:1500])
    rng = random.Random(0)
    rng.shuffle(out)
    return out[:limit]


def _words(rng: random.Random, pool: list[str], n: int) -> str:
    return " ".join(rng.choice(pool) for _ in range(n))


def _negative(kind: int, rng: random.Random, pos_words: list[str]) -> str:
    n = rng.randint(30, 150)
    if kind == 0:
        return ". ".join(f"{rng.choice(_SPAM)} {rng.choice(_PRODUCTS)} {rng.choice(_CITIES)} {rng.choice(_SPAM)}"
                         for _ in range(n // 4))
    if kind == 1:
        return "\n".join(" | ".join(rng.sample(_MENU, rng.randint(4, 9))) for _ in range(rng.randint(3, 8)))
    if kind == 2:
        return " ".join(rng.choice(_LEGAL) for _ in range(rng.randint(4, 12)))
    if kind == 3:
        return _words(rng, _LOREM, n).capitalize() + "."
    if kind == 4:
        chars = "abcdefghijklmnopqrstuvwxyz0123456789@#$%&*_-+=/\\"
        return " ".join("".join(rng.choice(chars) for _ in range(rng.randint(2, 12))) for _ in range(n))
    if kind == 5:
        return " ".join(rng.sample(pos_words, min(n, len(pos_words))))
    if kind == 6:
        return " ".join(rng.choice(_CLICK) for _ in range(rng.randint(5, 15)))
    if kind == 7:
        line = f"{rng.choice(_SPAM)} {rng.choice(_PRODUCTS)} {rng.choice(_SPAM)} {rng.choice(_PRODUCTS)}"
        return "\n".join([line] * rng.randint(5, 20))
    if kind == 8:
        return "Tags: " + ", ".join(rng.choice(_TAGS) for _ in range(n // 2))
    return "\n".join(f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} {rng.randint(10, 23)}:{rng.randint(10, 59)} "
                     f"{rng.choice(['INFO', 'WARN', 'DEBUG'])} id={rng.getrandbits(32):08x} "
                     f"status={rng.choice([200, 404, 500])} t={rng.random():.3f}" for _ in range(n // 8 + 2))


def negatives(pos: list[str], limit: int = N_EACH) -> list[str]:
    rng = random.Random(1)
    pos_words = " ".join(pos).split()
    return [_negative(i % 10, rng, pos_words) for i in range(limit)]


def main(path: Path | None = None) -> Path:
    path = path or Path(__file__).parent / "data" / "quality_seed.jsonl"
    pos = positives()
    neg = negatives(pos)
    with path.open("w", encoding="utf-8") as f:
        for label, texts in ((1, pos), (0, neg)):
            for t in texts:
                f.write(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    print(main())
