"""HTML -> main text (the `extract` operator) and language identification (the `language` operator).

extract: decoded HTML of a warc row --trafilatura.extract or resiliparse extract_plain_text (the
`extractor:`, with `options:` passed through)--> main text with navigation, footers, banners and
ads removed and one paragraph per block --> rows with less than `min_chars` removed (`too_short`),
pages where the extractor finds no main content removed (`no_content`). It runs inside the warc
read task, over each batch of rows before it becomes an Arrow block (`read_extractor`, called by
`readers.read_task`): the HTML never enters Arrow or Ray's object store, and the extractor still
runs over a batch of pages in a row (faster than one call between record parses; bench/README.md).
Rows of other sources pass untouched.

language: the first `max_chars` of each live row --py3langid (the langid.py model shipped in the
wheel, offline; probabilities normalised)--> `language` (ISO 639-1) and `language_score` columns;
with `languages:` rows in another language or below `min_score` are removed.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from llmray.curate.config import ExtractConfig
from llmray.curate.ops import _arr, _View

# Defaults merged under the user's `options:` (which win). Comments are not main text; formatting
# is kept so paragraphs stay separate blocks.
DEFAULTS = {
    "trafilatura": {"include_comments": False, "include_tables": True, "output_format": "txt"},
    "resiliparse": {"main_content": True, "preserve_formatting": True, "comments": False, "alt_texts": False},
}
_IDENT: list = []


def _function(name: str):
    if name == "trafilatura":
        import trafilatura

        return trafilatura.extract
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text


def check_options(name: str, options: dict) -> None:
    """Raise naming the option when the extractor function has no such parameter (fails on the driver)."""
    fn = _function(name)
    try:
        params = set(inspect.signature(fn).parameters)
    except ValueError:  # a Cython function without a signature: parse its text signature
        sig = getattr(fn, "__text_signature__", "") or ""
        params = {p.split("=")[0].strip(" *") for p in sig.strip("()").split(",")}
    bad = sorted(set(options) - params)
    if bad:
        raise ValueError(f"extract.options: {bad} are not parameters of the {name} extractor "
                         f"(known: {sorted(params - {'html', 'filecontent'})})")


def make_extractor(name: str, options: dict):
    """A function html -> text ('' when the page has no main content)."""
    fn = _function(name)
    kw = {**DEFAULTS[name], **options}

    def run(html: str) -> str:
        return fn(html, **kw) or ""

    return run


def read_extractor(task: dict):
    """For a warc read task with `extract` on: the function its read task applies to each batch of rows
    before they become an Arrow block (None when extract is off). So only extracted text, never the
    HTML, travels through Arrow, Ray's object store and the later operators (bench/README.md)."""
    opts = task.get("extract")
    if not opts:
        return None
    cfg = ExtractConfig(**opts)
    return functools.partial(op_extract, cfg=cfg, sources=[task["source"]], sample_chars=task["sample_chars"])


def op_extract(batch: dict, cfg, sources: list[str], sample_chars: int) -> dict:
    """Rows of `sources`: HTML -> main text; too short / no main content rejected as `extract`."""
    extractor = make_extractor(cfg.extractor, cfg.options)
    v = _View(batch, sample_chars)
    wanted = set(sources)
    for i in v.live:
        if batch["source"][i] not in wanted:
            continue
        text = extractor(v.text[i]).strip()
        if not text:
            v.reject(i, "extract", f"no_content: {cfg.extractor} found no main text")
        elif len(text) < cfg.min_chars:
            v.text[i] = text
            v.reject(i, "extract", f"too_short: {len(text)} characters < {cfg.min_chars}")
        else:
            v.text[i] = text
    return v.done()


def identifier():
    """The py3langid model with normalised probabilities, loaded once per process (about 1 s)."""
    if not _IDENT:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENT.append(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True))
    return _IDENT[0]


def classify(text: str, max_chars: int = 5000) -> tuple[str, float]:
    lang, score = identifier().classify(text[:max_chars])
    return lang, float(score)


def op_language(batch: dict, cfg, sample_chars: int) -> dict:
    v = _View(batch, sample_chars)
    lang = _arr([""] * len(v.drop))
    score = np.full(len(v.drop), np.nan)
    keep = set(cfg.languages)
    for i in v.live:
        lang[i], score[i] = classify(v.text[i], cfg.max_chars)
        if keep and lang[i] not in keep:
            v.reject(i, "language", f"other_language: {lang[i]} ({score[i]:.2f}) not in {sorted(keep)}")
        elif keep and score[i] < cfg.min_score:
            v.reject(i, "language", f"low_score: {lang[i]} {score[i]:.2f} < {cfg.min_score}")
    return v.done(language=lang, language_score=score)


# ---------------------------------------------------------------- quality measures (tests, bench)


def _words(text: str) -> list[str]:
    from llmray.curate.filters import word_tokens

    return [w.lower() for w in word_tokens(text)]


def word_f1(extracted: str, reference: str) -> float:
    """Bag-of-words F1 of extracted text against the planted main text."""
    from collections import Counter

    a, b = Counter(_words(extracted)), Counter(_words(reference))
    common = sum((a & b).values())
    if not common:
        return 0.0
    p, r = common / sum(a.values()), common / sum(b.values())
    return 2 * p * r / (p + r)


def boilerplate_kept(extracted: str, boilerplate: str, reference: str) -> float:
    """Fraction of the boilerplate's words (those not also in the main text) found in the extraction."""
    bp = set(_words(boilerplate)) - set(_words(reference))
    return len(bp & set(_words(extracted))) / max(len(bp), 1)
