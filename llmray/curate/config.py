"""The `curate` stage's config blocks: sources and one block per operator (pydantic only, light to import).

Each operator block has `enabled` and its thresholds; the heuristic filters default to the
published values (Gopher: Rae et al. 2021, table A1; C4: Raffel et al. 2020; FineWeb: Penedo et
al. 2024, as implemented in datatrove). The stage module `llmray.stages.curate` assembles these
into its `Config`; `llmray.curate.pipeline` runs them in the order of `OPERATORS`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmray.config import EXTERNAL_INPUT, StrictModel

# Operators in pipeline order. The funnel lists the enabled ones in this order.
# url_filter, license and code_filter act while reading (see `readers.py`); extract and language are
# map steps. The web/code operators only run (and appear in the funnel) for sources of their type.
OPERATORS = ("url_filter", "license", "code_filter", "extract", "clean", "language", "boilerplate",
             "gopher_quality", "gopher_repetition", "c4", "fineweb", "toxicity", "quality", "decontaminate", "pii", "exact_dedup", "near_dedup", "mix")
SOURCE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SourceConfig(StrictModel):
    """One input: files (local globs or pyarrow.fs URIs) or the built-in `python-docs` corpus."""

    type: Literal["jsonl", "parquet", "text", "python-docs", "warc", "repo"] = Field(
        description="jsonl (also .jsonl.gz / .jsonl.zst), parquet, text (one document per file), python-docs "
                    "(docstrings of the installed Python's standard library), warc (.warc / .warc.gz web "
                    "crawls: one document per HTML response record) or repo (Git repositories, folders, "
                    ".tar.gz / .zip archives: one document per file)."
    )
    path: list[str] = Field(
        default_factory=list, json_schema_extra=EXTERNAL_INPUT,
        description="Files, directories or glob patterns (`**` recurses); local or any pyarrow.fs URI "
                    "(s3://, gs://, file://). A single string is accepted. Not used by python-docs. For repo "
                    "sources each match is one repository: a folder (a Git work tree or a plain folder) or an "
                    "archive (.tar.gz, .tgz, .zip; archives also from object stores).",
    )
    name: str | None = Field(
        None, pattern=SOURCE_NAME_RE,
        description="Label in ids, metrics and quarantine files; default: the type plus the source's position.",
    )
    text_field: str = Field("text", description="Record field (jsonl) or column (parquet) holding the text.")
    id_field: str | None = Field(
        "id", description="Field holding a document id; records without it get `<source>/<file>:<line>`.")
    limit: int | None = Field(
        None, ge=1, description="Read at most this many records (the first ones, in file order); files are then "
                                "read one after another so the cut is deterministic.")
    weight: float = Field(
        1.0, gt=0, le=100,
        description="Share of this source's surviving documents in the output: below 1 keeps that fraction "
                    "(chosen by a hash of the id, so deterministic), above 1 repeats documents (2.5 = every "
                    "document twice, half of them three times).",
    )
    include_source: bool = Field(False, description="python-docs only: append each object's source code.")
    modules: list[str] | None = Field(
        None, description="python-docs only: these stdlib modules instead of all of them.")
    chunks: int = Field(
        8, ge=1, le=256, description="python-docs only: read tasks the module list is split into (parallelism).")

    @field_validator("path", mode="before")
    @classmethod
    def _one_path(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self):
        if self.type == "python-docs":
            if self.path:
                raise ValueError("python-docs is built in; it takes no `path`")
        else:
            if not self.path:
                raise ValueError(f"a {self.type} source needs `path`")
            for opt in ("include_source", "modules"):
                if getattr(self, opt) not in (False, None):
                    raise ValueError(f"`{opt}` applies to python-docs sources only")
        return self


WEB_OPS = ("url_filter", "extract")
CODE_OPS = ("license", "code_filter")


def op_active(cfg, op: str) -> bool:
    """Whether an operator runs for this stage config: enabled, and (web/code operators) a source of
    its type exists, so adding the blocks leaves the funnel of other corpora unchanged."""
    if op == "mix":
        return any(s.weight != 1.0 for s in cfg.sources)
    if not getattr(cfg, op).enabled:
        return False
    if op in WEB_OPS:
        return any(s.type == "warc" for s in cfg.sources)
    if op in CODE_OPS:
        return any(s.type == "repo" for s in cfg.sources)
    return True


class CleanConfig(StrictModel):
    """Text repair: Unicode normalisation, invalid UTF-8 and control characters, whitespace."""

    enabled: bool = Field(True, description="Run the cleaner (documents empty after cleaning are removed).")
    unicode_form: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalisation form.")
    max_invalid_fraction: float = Field(
        0.05, ge=0, le=1,
        description="Records whose bytes are invalid UTF-8 are repaired (U+FFFD); above this fraction of "
                    "replaced characters the record is quarantined as undecodable instead.")
    max_control_fraction: float = Field(
        0.05, ge=0, le=1,
        description="Above this fraction of control characters (other than tab/newline) a record is "
                    "quarantined as binary data; below it the characters are removed.")
    max_blank_lines: int = Field(2, ge=0, description="Runs of blank lines are shortened to this many.")
    strip_trailing_spaces: bool = Field(True, description="Remove spaces at line ends (indentation is kept).")


class BoilerplateConfig(StrictModel):
    """Lines repeated across many documents (navigation, footers, licence blurbs) are removed."""

    enabled: bool = Field(True, description="Count lines across the whole corpus and remove frequent ones.")
    min_docs: int = Field(20, ge=2, description="A line is boilerplate when at least this many documents have it.")
    min_fraction: float = Field(
        0.0, ge=0, le=1, description="... and at least this fraction of all documents (0 = count alone decides).")
    min_chars: int = Field(
        30, ge=1, description="Lines shorter than this (after stripping) are never boilerplate: short lines "
                              "such as `else:` or `}` repeat for structural reasons.")


class UrlFilterConfig(StrictModel):
    """URL block and allow lists for web (warc) sources, applied while reading (counted in the funnel)."""

    enabled: bool = Field(True, description="Apply the lists (without lists nothing is removed).")
    block_lists: list[str] = Field(
        default_factory=list, json_schema_extra=EXTERNAL_INPUT,
        description="Files (local or pyarrow.fs URI) with one entry per line (# comments): a domain "
                    "(`example.com` blocks it and its subdomains) or a URL prefix (`http://a.org/ads/`).")
    allow_lists: list[str] = Field(
        default_factory=list, json_schema_extra=EXTERNAL_INPUT,
        description="Same format; when given, only URLs matching an entry are kept (the block list still applies).")


class ExtractConfig(StrictModel):
    """HTML -> main text for web (warc) sources: boilerplate (navigation, footers, banners, ads) removed,
    paragraphs kept as blank-line separated blocks; too short results removed."""

    enabled: bool = Field(True, description="Extract text from HTML (off: the decoded HTML is the text).")
    extractor: Literal["trafilatura", "resiliparse"] = Field(
        "trafilatura", description="trafilatura.extract (best main-text quality) or resiliparse's "
                                   "extract_plain_text(main_content=True) (several times faster).")
    options: dict[str, bool | int | float | str | None] = Field(
        default_factory=dict,
        description="Keyword arguments for the extractor call, e.g. {favor_precision: true, include_tables: "
                    "false} (trafilatura) or {main_content: true, list_bullets: false} (resiliparse); names are "
                    "checked against the function's signature.")
    min_chars: int = Field(200, ge=0, description="Remove pages with fewer characters of extracted text.")
    html_only: bool = Field(
        True, description="Remove response records whose HTTP content type is not HTML (text/html, "
                          "application/xhtml+xml) as `not_html`.")


class LanguageConfig(StrictModel):
    """Language identification (py3langid, offline); the label and its probability are kept as the
    `language` and `language_score` columns and choose the Gopher stop-word list."""

    enabled: bool = Field(False, description="Identify the language of every document.")
    languages: list[str] = Field(
        default_factory=list,
        description="Language codes to keep, as py3langid labels them (ISO 639-1 where one exists, e.g. "
                    "[en, de]); empty: keep every language (label only).")
    min_score: float = Field(
        0.65, ge=0, le=1, description="With `languages`: remove documents whose top language probability is below this.")
    max_chars: int = Field(
        5000, ge=100, description="Classify the first this many characters (the score saturates long before).")


class LicenseConfig(StrictModel):
    """Licence of each repository (SPDX id from its LICENSE/COPYING file text), with an allow list."""

    enabled: bool = Field(True, description="Remove files of repositories whose licence is not allowed.")
    allow: list[str] = Field(
        ["MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Unlicense", "CC0-1.0", "0BSD", "Zlib"],
        description="SPDX ids kept (permissive licences by default).")
    allow_unknown: bool = Field(
        False, description="Keep repositories with no licence file or one that matches no known licence.")


class CodeFilterConfig(StrictModel):
    """The Stack / StarCoder file rules for repo sources; null disables a single rule."""

    enabled: bool = Field(True, description="Apply the file rules.")
    max_file_bytes: int | None = Field(
        1_000_000, ge=1, description="Remove larger files (The Stack: 1 MB); they are not read.")
    max_line_length: int | None = Field(1000, ge=1, description="Remove files with a longer line (The Stack).")
    max_mean_line_length: float | None = Field(
        100, ge=1, description="Remove files whose mean line length is above this (The Stack; catches minified code).")
    min_alnum_fraction: float | None = Field(
        0.25, ge=0, le=1, description="Remove files with a smaller fraction of alphanumeric characters (The Stack).")
    binary: bool = Field(True, description="Remove binary files (a NUL byte in the first 8 KiB, or not UTF-8).")
    vendored: list[str] = Field(
        ["node_modules/", "vendor/", "vendored/", "third_party/", "thirdparty/", "external/", "bower_components/",
         "site-packages/", ".venv/", "dist/", "build/"],
        description="Remove files under a folder with one of these names (anywhere in the path).")
    generated: list[str] = Field(
        ["generated by", "do not edit", "autogenerated", "auto-generated", "@generated"],
        description="Remove files whose first 5 lines contain one of these markers (case-insensitive); "
                    "`*.min.js`, `*.min.css`, lock files and `*_pb2.py` are removed by name.")
    languages: list[str] = Field(
        default_factory=list,
        description="Keep only these languages (names as in the extension map, e.g. [Python, Markdown]); "
                    "empty: every file with a known extension.")
    unknown_extensions: bool = Field(False, description="Keep files whose extension is not in the language map.")


class PiiConfig(StrictModel):
    """Redaction of personal data: matches are replaced by placeholders, documents are kept."""

    enabled: bool = Field(False, description="Redact emails, IP addresses and phone numbers.")
    emails: bool = Field(True, description="Redact email addresses.")
    ips: bool = Field(True, description="Redact IPv4/IPv6 addresses.")
    only_public_ips: bool = Field(
        True, description="Keep private, loopback and documentation addresses (127.0.0.1, 10.x, 192.0.2.x).")
    phones: bool = Field(True, description="Redact phone numbers (9-15 digits with separators).")
    email_replacement: str = Field("<EMAIL>", description="Placeholder for an email address.")
    ip_replacement: str = Field("<IP_ADDRESS>", description="Placeholder for an IP address.")
    phone_replacement: str = Field("<PHONE>", description="Placeholder for a phone number.")


# Frequent function words per language (the Gopher rule's English list extended the same way: words
# that almost every sentence of running text contains and that lists, menus and code lack).
STOP_WORDS = {
    "de": ("der", "die", "und", "das", "ist", "nicht", "mit", "von", "zu", "ein"),
    "fr": ("le", "la", "les", "et", "de", "des", "est", "que", "un", "une"),
    "es": ("el", "la", "los", "las", "y", "de", "que", "en", "es", "un"),
    "it": ("il", "la", "di", "che", "e", "un", "per", "non", "sono", "una"),
    "nl": ("de", "het", "een", "en", "van", "is", "dat", "niet", "op", "met"),
    "pt": ("o", "a", "os", "as", "de", "que", "e", "um", "uma", "não"),
}


class GopherQualityConfig(StrictModel):
    """Gopher quality rules (Rae et al. 2021); null disables a single rule."""

    enabled: bool = Field(True, description="Apply the Gopher quality rules.")
    min_words: int | None = Field(50, ge=0, description="Fewest words (punctuation-only tokens not counted).")
    max_words: int | None = Field(100_000, ge=1, description="Most words.")
    min_mean_word_length: float | None = Field(3, ge=0, description="Lowest mean word length (characters).")
    max_mean_word_length: float | None = Field(10, ge=0, description="Highest mean word length (characters).")
    max_symbol_word_ratio: float | None = Field(
        0.1, ge=0, description="Most `#` per word, and most ellipses (`...`, `…`) per word.")
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1, description="Most lines starting with a bullet.")
    max_ellipsis_lines_ratio: float | None = Field(
        0.3, ge=0, le=1, description="Most lines ending with an ellipsis.")
    min_alpha_words_ratio: float | None = Field(
        0.8, ge=0, le=1, description="Fewest words containing an alphabetic character, as a fraction.")
    min_stop_words: int | None = Field(
        2, ge=0, description="Fewest stop words present (English, or the document's language when the "
                             "`language` operator ran: see `stop_words_by_language`).")
    stop_words: list[str] = Field(
        ["the", "be", "to", "of", "and", "that", "have", "with"],
        description="The stop words counted for English documents and for documents of unknown language.")
    stop_words_by_language: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in STOP_WORDS.items()},
        description="ISO 639-1 code -> stop words counted for documents the `language` operator labelled so; "
                    "for a language with no list here (other than en) the stop-word rule is skipped.")


class GopherRepetitionConfig(StrictModel):
    """Gopher repetition rules (Rae et al. 2021, table A1); null disables a single rule."""

    enabled: bool = Field(True, description="Apply the Gopher repetition rules.")
    dup_line_frac: float | None = Field(0.3, ge=0, le=1, description="Most duplicated lines, as a line fraction.")
    dup_para_frac: float | None = Field(0.3, ge=0, le=1, description="Most duplicated paragraphs, as a fraction.")
    dup_line_char_frac: float | None = Field(
        0.2, ge=0, le=1, description="Most characters in duplicated lines, as a fraction.")
    dup_para_char_frac: float | None = Field(
        0.2, ge=0, le=1, description="Most characters in duplicated paragraphs, as a fraction.")
    top_ngrams: dict[int, float] = Field(
        {2: 0.2, 3: 0.18, 4: 0.16},
        description="n -> most characters covered by the single most frequent word n-gram, as a fraction.")
    dup_ngrams: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> most characters in duplicated word n-grams, as a fraction.")


class C4Config(StrictModel):
    """C4 rules (Raffel et al. 2020): line filters rewrite the text; page rules remove documents.
    Off by default: the curly-bracket and terminal-punctuation rules remove code."""

    enabled: bool = Field(False, description="Apply the C4 rules.")
    remove_citations: bool = Field(True, description="Strip wiki-style citations like [1] or [edit].")
    terminal_punct_lines: bool = Field(True, description="Keep only lines ending in . ? ! \" or '.")
    min_words_per_line: int = Field(3, ge=0, description="Drop lines with fewer words (0 disables).")
    max_word_length: int = Field(1000, ge=1, description="Drop lines with a longer word.")
    min_sentences: int = Field(5, ge=0, description="Remove documents with fewer sentences left (0 disables).")
    lorem_ipsum: bool = Field(True, description="Remove documents containing 'lorem ipsum'.")
    javascript_lines: bool = Field(True, description="Drop lines mentioning javascript.")
    curly_bracket: bool = Field(True, description="Remove documents containing '{'.")
    policy_lines: bool = Field(True, description="Drop lines about cookies, privacy policy or terms of use.")


class FineWebConfig(StrictModel):
    """FineWeb's extra rules (Penedo et al. 2024)."""

    enabled: bool = Field(True, description="Apply the FineWeb rules.")
    line_punct_thr: float | None = Field(
        0.12, ge=0, le=1, description="Remove when at most this fraction of lines ends in terminal punctuation.")
    line_punct_exclude_zero: bool = Field(False, description="Do not apply the rule above when no line does.")
    short_line_thr: float | None = Field(
        0.67, ge=0, le=1, description="Remove when at least this fraction of lines is short.")
    short_line_length: int = Field(30, ge=1, description="A line this long or shorter is short.")
    char_duplicates_ratio: float | None = Field(
        0.01, ge=0, le=1, description="Remove when duplicated lines hold at least this fraction of characters.")
    new_line_ratio: float | None = Field(
        0.3, ge=0, description="Remove when newlines per word exceed this (list-like pages).")


class ClassifierConfig(StrictModel):
    """A hashed word n-gram logistic regression trained from labelled JSONL at the start of the stage."""

    train: list[str] = Field(
        default_factory=list, json_schema_extra=EXTERNAL_INPUT,
        description="Labelled JSONL files/globs: one object per line with the text and a 0/1 label "
                    "(1 = the class this classifier detects). Empty: the quality model's built-in seed set.")
    text_field: str = Field("text", description="Field holding the text in the training files.")
    label_field: str = Field("label", description="Field holding the 0/1 label in the training files.")
    ngrams: list[int] = Field([1, 2], description="Word n-gram sizes used as features.")
    dim_bits: int = Field(18, ge=10, le=24, description="Features are hashed into 2**dim_bits buckets.")
    epochs: int = Field(30, ge=1, le=1000, description="Training epochs (full-batch Adam).")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on the weights.")
    holdout: float = Field(0.2, ge=0, lt=1, description="Fraction held out to report accuracy (then retrained on all).")
    seed: int = Field(0, description="Seed for the holdout split and initialisation.")

    @field_validator("ngrams")
    @classmethod
    def _ngrams(cls, v):
        if not v or any(n < 1 or n > 5 for n in v):
            raise ValueError("ngrams must be a non-empty list of sizes between 1 and 5")
        return v


class QualityConfig(StrictModel):
    """Model-based quality scoring; the score is kept as the `quality` column."""

    enabled: bool = Field(True, description="Score documents and remove those below the threshold.")
    threshold: float = Field(0.5, ge=0, le=1, description="Keep documents whose quality score is at least this.")
    model: ClassifierConfig = Field(default_factory=ClassifierConfig, description="The classifier and its training data.")


class ToxicityConfig(StrictModel):
    """Toxicity scoring by word lists (and optionally a trained classifier); score kept as `toxicity`."""

    enabled: bool = Field(True, description="Score documents and remove those above the threshold.")
    word_lists: list[str] = Field(
        default_factory=list,
        description="Files with one word or phrase per line (# comments); empty: the built-in English list.")
    threshold: float = Field(
        0.01, ge=0, le=1, description="Remove when listed words/phrases make up more than this fraction of words.")
    max_count: int | None = Field(
        None, ge=0, description="Also remove when more than this many listed words occur (0 = C4's any-word rule).")
    classifier: ClassifierConfig | None = Field(
        None, description="Optional classifier (label 1 = toxic); its probability is the score when higher.")
    classifier_threshold: float = Field(0.5, ge=0, le=1, description="Remove when the classifier says at least this.")

    @model_validator(mode="after")
    def _check(self):
        if self.classifier is not None and not self.classifier.train:
            raise ValueError("toxicity.classifier needs `train` files (there is no built-in toxicity set)")
        return self


class EvalSetConfig(StrictModel):
    """One evaluation set to protect."""

    path: str = Field(description="JSONL file (local or pyarrow.fs URI), one eval item per line.",
                      json_schema_extra=EXTERNAL_INPUT)
    name: str | None = Field(None, pattern=SOURCE_NAME_RE, description="Label in the report; default: file stem.")
    text_fields: list[str] = Field(
        ["text"], description="Fields whose text is matched (e.g. [question, answer]); missing ones are skipped.")
    id_field: str | None = Field("id", description="Field naming an item in the report; default: its line number.")


class DecontaminateConfig(StrictModel):
    """Removes documents sharing word n-grams with evaluation sets, and reports which items matched."""

    enabled: bool = Field(False, description="Check documents against `eval_sets`.")
    eval_sets: list[EvalSetConfig] = Field(default_factory=list, description="The evaluation sets.")
    eval_stages: list[str] = Field(default_factory=list, description="Eval stages of this pipeline whose lm-eval "
                                   "tasks' documents (prompt, choices, answer; every item, not only `limit`) are "
                                   "eval sets too, named <stage>/<task>. Giving some turns `enabled` on unless "
                                   "it is set. They are read from the eval stages' config (not their outputs), "
                                   "so no cycle: the eval stage may evaluate models trained on this corpus.")
    ngram: int = Field(13, ge=3, le=50, description="Word n-gram size (13 as in GPT-3).")
    min_matches: int = Field(1, ge=1, description="Remove a document sharing at least this many n-grams.")

    @field_validator("eval_sets", mode="before")
    @classmethod
    def _paths(cls, v):
        return [{"path": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    def content_digests(self, pipe, digest) -> dict[str, str]:
        """The named eval stages' task digests (llmray.fingerprint.content_inputs): editing their tasks
        changes the documents removed, so this corpus reruns; their limit or batch size does not (every
        item is read)."""
        out: dict[str, str] = {}
        for name in self.eval_stages if self.enabled and pipe is not None else ():
            hook = getattr(pipe.stages.get(name), "content_digests", None)
            if callable(hook):
                out.update({f"eval_stages.{name}.{k}": v for k, v in hook(pipe, digest).items()})
        return out

    @model_validator(mode="after")
    def _check(self):
        if self.eval_stages and "enabled" not in self.model_fields_set:
            self.enabled = True  # `decontaminate: {eval_stages: [bench]}` reads as "on"; an explicit false stays
        if self.enabled and not self.eval_sets and not self.eval_stages:
            raise ValueError("decontaminate is enabled but names no eval_sets or eval_stages")
        return self


class ExactDedupConfig(StrictModel):
    """Exact duplicates: one document per hash of the normalised text survives (the first in source order)."""

    enabled: bool = Field(True, description="Remove exact duplicates.")
    normalize: bool = Field(True, description="Hash case-folded text with whitespace runs collapsed.")


class NearDedupConfig(StrictModel):
    """MinHash LSH near-duplicate removal over the whole corpus (first document in source order survives)."""

    enabled: bool = Field(True, description="Remove near duplicates.")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of word-shingle sets that counts as a duplicate.")
    ngram: int = Field(5, ge=1, le=20, description="Words per shingle.")
    num_perm: int = Field(256, ge=16, le=1024, description="MinHash permutations (signature length).")
    bands: int | None = Field(None, ge=1, description="LSH bands; with `rows`, overrides the automatic choice.")
    rows: int | None = Field(None, ge=1, description="Rows per LSH band.")
    target_recall: float = Field(
        0.995, gt=0, lt=1, description="Automatic banding: probability that a pair at `threshold` becomes a candidate.")
    verify: Literal["exact", "estimate"] = Field(
        "exact",
        description="How candidate pairs are checked against `threshold`: exact Jaccard of the shingle sets "
                    "(one extra pass over the candidate documents; precision is then exact), or the MinHash "
                    "estimate from the full signatures (no extra pass; pairs within a few hundredths of the "
                    "threshold go either way).")
    hash: Literal["fast", "datasketch"] = Field(
        "fast", description="Shingle hash: vectorized word-hash n-grams, or sha1 of the shingle string "
                            "(signatures bit-identical to datasketch.MinHash.update).")
    seed: int = Field(1, description="Permutation seed (datasketch's `seed`).")
    shards: int | None = Field(None, ge=1, description="LSH band-shard actors (default: the stage's workers).")

    @model_validator(mode="after")
    def _check(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both `bands` and `rows`, or neither")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class OutputConfig(StrictModel):
    """How results are written."""

    rows_per_file: int = Field(100_000, ge=1, description="Target rows per data parquet file.")
    rejected_samples: int = Field(50, ge=0, description="Rejected documents kept per operator for audit.")
    sample_chars: int = Field(2000, ge=100, description="Characters of text kept per rejected sample.")
    keep_metadata: bool = Field(True, description="Keep other record fields as a JSON `meta` column.")


def default_source_name(src: SourceConfig, index: int) -> str:
    if src.name:
        return src.name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", src.type) + (f"-{index}" if index else "")
