"""Heuristic document filters: Gopher quality, Gopher repetition, C4 and FineWeb rules.

Each filter maps (text, its config block) to a rejection reason such as
"gopher_short_doc: 12 words < 50", or None to keep the document; C4 may also rewrite the text (it
drops lines). Thresholds are the published ones (see `llmray.curate.config`); a rule whose
threshold is null is skipped. Word tokens come from one regex (no NLTK): words, hyphenated or
dotted words and contractions count as one word; lone punctuation marks are separate tokens that
do not count as words. Repetition statistics are vectorized over word hashes, so a 100k-word
document costs milliseconds per n-gram size, not a Python loop per n-gram.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from llmray.curate.hashing import ngram_hashes, word_hashes

TOKEN_RE = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]")
_PARA_RE = re.compile(r"\n{2,}")
BULLETS = ("•", "●", "○", "▪", "◦", "‣", "⁃", "-", "*", "–")
END_PUNCT = (".", "?", "!", '"', "'")
CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_SENTENCE_END_RE = re.compile(r"[.!?]+(?:[\"')\]]*)(?:\s|$)")
_HAS_ALPHA = re.compile(r"[^\W\d_]").search


def word_tokens(text: str) -> list[str]:
    """Tokens that are words (not lone punctuation)."""
    return [t for t in TOKEN_RE.findall(text) if len(t) > 1 or t.isalnum() or t == "_"]


# ---------------------------------------------------------------- Gopher quality


def stop_words_for(cfg, lang: str | None) -> set[str] | None:
    """The stop words counted for a document: English (and unknown language) -> `stop_words`;
    another language -> its `stop_words_by_language` list, or None (rule skipped) without one."""
    if lang is None or lang == "en":
        return set(cfg.stop_words)
    words = cfg.stop_words_by_language.get(lang)
    return set(words) if words else None


def gopher_quality(text: str, cfg, lang: str | None = None) -> str | None:
    ws = word_tokens(text)
    n = len(ws)
    if cfg.min_words is not None and n < cfg.min_words:
        return f"gopher_short_doc: {n} words < {cfg.min_words}"
    if cfg.max_words is not None and n > cfg.max_words:
        return f"gopher_long_doc: {n} words > {cfg.max_words}"
    if n == 0:
        return "gopher_no_words"
    mean_len = sum(map(len, ws)) / n
    if cfg.min_mean_word_length is not None and mean_len < cfg.min_mean_word_length:
        return f"gopher_short_words: mean word length {mean_len:.2f} < {cfg.min_mean_word_length}"
    if cfg.max_mean_word_length is not None and mean_len > cfg.max_mean_word_length:
        return f"gopher_long_words: mean word length {mean_len:.2f} > {cfg.max_mean_word_length}"
    if cfg.max_symbol_word_ratio is not None:
        hashes = text.count("#") / n
        if hashes > cfg.max_symbol_word_ratio:
            return f"gopher_hash_ratio: {hashes:.3f} '#' per word > {cfg.max_symbol_word_ratio}"
        ell = (text.count("...") + text.count("…")) / n
        if ell > cfg.max_symbol_word_ratio:
            return f"gopher_ellipsis_ratio: {ell:.3f} ellipses per word > {cfg.max_symbol_word_ratio}"
    lines = text.splitlines() or [""]
    if cfg.max_bullet_lines_ratio is not None:
        r = sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines)
        if r > cfg.max_bullet_lines_ratio:
            return f"gopher_bullet_lines: {r:.2f} of lines are bullets > {cfg.max_bullet_lines_ratio}"
    if cfg.max_ellipsis_lines_ratio is not None:
        r = sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines)
        if r > cfg.max_ellipsis_lines_ratio:
            return f"gopher_ellipsis_lines: {r:.2f} of lines end with '...' > {cfg.max_ellipsis_lines_ratio}"
    if cfg.min_alpha_words_ratio is not None:
        r = sum(1 for w in ws if w.isalpha() or _HAS_ALPHA(w)) / n  # isalpha: the common case, in C
        if r < cfg.min_alpha_words_ratio:
            return f"gopher_alpha_words: {r:.2f} of words have a letter < {cfg.min_alpha_words_ratio}"
    stop = stop_words_for(cfg, lang) if cfg.min_stop_words else None
    if stop is not None:
        found = 0
        for w in ws:
            if w.lower() in stop:
                found += 1
                if found >= cfg.min_stop_words:
                    break
        if found < cfg.min_stop_words:
            return f"gopher_stop_words: {found} {lang or 'en'} stop words < {cfg.min_stop_words}"
    return None


# ---------------------------------------------------------------- Gopher repetition


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated elements, characters in the repeats) — first occurrences are not counted."""
    seen: set[str] = set()
    dup = chars = 0
    for x in items:
        if x in seen:
            dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return dup, chars


class _Ngrams:
    """Word n-gram hashes and character lengths of one document, sharing one word-hash pass."""

    def __init__(self, ws: list[str]):
        self.n_words = len(ws)
        self.wh = word_hashes(ws)
        self.lens = np.fromiter(map(len, ws), dtype=np.int64, count=len(ws))
        self.cum = np.concatenate([[0], np.cumsum(self.lens)])

    def stats(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(first index of each distinct n-gram, its count, inverse map, char length per position)."""
        m = self.n_words - n + 1
        h = ngram_hashes(self.wh, n, short=False)
        _, first, inverse, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
        return first, counts, inverse, self.cum[n:n + m] - self.cum[:m] + (n - 1)


def top_ngram_fraction(ng: _Ngrams, n: int, total_chars: int) -> float | None:
    """Characters covered by the most frequent n-gram / total; None when no n-gram repeats (then
    no longer n-gram repeats either)."""
    if ng.n_words < n + 1:
        return None
    first, counts, _, nlen = ng.stats(n)
    top = int(np.argmax(counts))
    if counts[top] < 2:
        return None
    return float(counts[top] * nlen[first[top]]) / max(total_chars, 1)


def dup_ngram_fraction(ng: _Ngrams, n: int, total_chars: int) -> float | None:
    """Characters of words covered by repeated occurrences of an n-gram (not the first one) / total;
    None when no n-gram repeats."""
    if ng.n_words < n + 1:
        return None
    first, _, inverse, _ = ng.stats(n)
    dup_starts = np.flatnonzero(first[inverse] < np.arange(len(inverse)))
    if len(dup_starts) == 0:
        return None
    cover = np.zeros(ng.n_words + 1, dtype=np.int64)
    np.add.at(cover, dup_starts, 1)
    np.add.at(cover, dup_starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(ng.lens[covered].sum()) / max(total_chars, 1)


def gopher_repetition(text: str, cfg) -> str | None:
    total = max(len(text), 1)
    paras = _PARA_RE.split(text.strip())
    dup, chars = _duplicates(paras)
    if cfg.dup_para_frac is not None and dup / len(paras) > cfg.dup_para_frac:
        return f"gopher_dup_para_frac: {dup / len(paras):.2f} > {cfg.dup_para_frac}"
    if cfg.dup_para_char_frac is not None and chars / total > cfg.dup_para_char_frac:
        return f"gopher_dup_para_char_frac: {chars / total:.2f} > {cfg.dup_para_char_frac}"
    lines = text.splitlines() or [""]
    dup, chars = _duplicates(lines)
    if cfg.dup_line_frac is not None and dup / len(lines) > cfg.dup_line_frac:
        return f"gopher_dup_line_frac: {dup / len(lines):.2f} > {cfg.dup_line_frac}"
    if cfg.dup_line_char_frac is not None and chars / total > cfg.dup_line_char_frac:
        return f"gopher_dup_line_char_frac: {chars / total:.2f} > {cfg.dup_line_char_frac}"
    ng = _Ngrams(word_tokens(text))
    for n, limit in sorted(cfg.top_ngrams.items()):
        r = top_ngram_fraction(ng, n, total)
        if r is None:
            break  # nothing repeats at this size, so nothing longer does
        if r > limit:
            return f"gopher_top_{n}_gram: {r:.3f} > {limit}"
    for n, limit in sorted(cfg.dup_ngrams.items()):
        r = dup_ngram_fraction(ng, n, total)
        if r is None:
            break
        if r > limit:
            return f"gopher_dup_{n}_grams: {r:.3f} > {limit}"
    return None


# ---------------------------------------------------------------- C4


def count_sentences(line: str) -> int:
    return max(1, len(_SENTENCE_END_RE.findall(line))) if line.strip() else 0


def c4(text: str, cfg) -> tuple[str, str | None]:
    """C4 line rules (rewrite) and page rules (reject). Returns (new text, reason or None)."""
    kept, sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        ws = line.split()
        if any(len(w) > cfg.max_word_length for w in ws):
            continue
        if cfg.remove_citations:
            line = CITATION_RE.sub("", line)
        if cfg.terminal_punct_lines and (not line.endswith(END_PUNCT) or line.endswith("...")):
            continue
        if len(ws) < cfg.min_words_per_line:
            continue
        low = line.lower()
        if cfg.lorem_ipsum and "lorem ipsum" in low:
            return text, "c4_lorem_ipsum"
        if cfg.javascript_lines and "javascript" in low:
            continue
        if cfg.curly_bracket and "{" in line:
            return text, "c4_curly_bracket"
        if cfg.policy_lines and any(p in low for p in POLICY):
            continue
        sentences += count_sentences(line)
        kept.append(line)
    if sentences < cfg.min_sentences:
        return text, f"c4_too_few_sentences: {sentences} < {cfg.min_sentences}"
    return "\n".join(kept).strip(), None


# ---------------------------------------------------------------- FineWeb


def fineweb(text: str, cfg) -> str | None:
    lines = text.split("\n")
    if cfg.line_punct_thr is not None:
        r = sum(ln.endswith(END_PUNCT) for ln in lines) / len(lines)
        if r <= cfg.line_punct_thr and not (r == 0 and cfg.line_punct_exclude_zero):
            return f"fineweb_line_punct_ratio: {r:.2f} <= {cfg.line_punct_thr}"
    if cfg.short_line_thr is not None:
        r = sum(len(ln) <= cfg.short_line_length for ln in lines) / len(lines)
        if r >= cfg.short_line_thr:
            return f"fineweb_short_line_ratio: {r:.2f} >= {cfg.short_line_thr}"
    if cfg.char_duplicates_ratio is not None:
        non_empty = [ln for ln in lines if ln.strip()]
        r = _duplicates(non_empty)[1] / max(len(text) - text.count("\n"), 1)
        if r >= cfg.char_duplicates_ratio:
            return f"fineweb_char_dup_ratio: {r:.3f} >= {cfg.char_duplicates_ratio}"
    if cfg.new_line_ratio is not None:
        n_words = max(len(word_tokens(text)), 1)
        r = text.count("\n") / n_words
        if r > cfg.new_line_ratio:
            return f"fineweb_list_ratio: {r:.2f} newlines per word > {cfg.new_line_ratio}"
    return None


def reason_counts(reasons) -> dict[str, int]:
    """Reason strings -> counts of their rule names (the part before ':')."""
    return dict(Counter(r.split(":", 1)[0] for r in reasons if r))
