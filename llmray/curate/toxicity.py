"""Toxicity scoring from word lists (plus an optional trained classifier).

Word-list files hold one word or phrase per line (`#` starts a comment). Text and list entries are
tokenised the same way (`hashing.words`: lower-case `\\w+`), so "F*** you" style spacing and case do
not matter and phrases match as word sequences. The score of a document is the fraction of its
words covered by listed entries; the stage removes documents above `threshold` (or with more than
`max_count` hits, which at 0 is C4's "any listed word" rule). When a classifier is configured, the
score is the larger of the two.
"""

from __future__ import annotations

from importlib import resources

from llmray.curate.hashing import words

BUILTIN_LIST = "toxicity_en.txt"


def _parse(lines) -> list[tuple[str, ...]]:
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            toks = tuple(words(line))
            if toks:
                out.append(toks)
    return out


def load_word_lists(paths: list[str]) -> list[tuple[str, ...]]:
    """Entries (as word tuples) from the given files, or the built-in English list when none."""
    if not paths:
        with resources.files("llmray.curate").joinpath("data", BUILTIN_LIST).open("r", encoding="utf-8") as f:
            return _parse(f)
    from llmray.curate.sources import expand_paths, iter_lines

    entries: list[tuple[str, ...]] = []
    for ref in expand_paths(paths, "text"):
        entries.extend(_parse(raw.decode("utf-8", "replace") for _, raw in iter_lines(ref.uri)))
    if not entries:
        raise ValueError(f"the toxicity word lists {paths} hold no entries")
    return entries


class WordListScorer:
    """Counts listed words and phrases in a document."""

    def __init__(self, entries: list[tuple[str, ...]]):
        self.single = {e[0] for e in entries if len(e) == 1}
        self.phrases: dict[int, set[tuple[str, ...]]] = {}
        for e in entries:
            if len(e) > 1:
                self.phrases.setdefault(len(e), set()).add(e)

    def count(self, text: str) -> tuple[int, int]:
        """(words covered by listed entries, total words)."""
        ws = words(text)
        single = self.single
        hits = sum(1 for w in ws if w in single)
        for n, table in self.phrases.items():
            hits += n * sum(1 for i in range(len(ws) - n + 1) if tuple(ws[i:i + n]) in table)
        return hits, len(ws)

    def score(self, text: str) -> tuple[float, int]:
        hits, n = self.count(text)
        return (min(hits / n, 1.0) if n else 0.0), hits
