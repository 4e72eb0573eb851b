"""Text repair and rewriting operators: decoding, Unicode/whitespace cleaning, boilerplate lines, PII.

All functions take and return plain strings (plus small counters) so they run unchanged inside
Ray Data batches. Data flow per document: raw bytes --`decode`--> str (invalid UTF-8 replaced, or
quarantined when mostly invalid) --`clean_text`--> NFC, no control characters, normalised
whitespace --`line_keys`/`strip_lines`--> boilerplate lines removed --`redact_pii`--> placeholders.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from llmray.curate.hashing import hash_bytes64

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES_RE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH_RE = re.compile(r"[\u200b\ufeff]")
_TRAILING_RE = re.compile(r"[ \t]+$", re.MULTILINE)


def sanitize(s: str) -> tuple[str, int]:
    """Replace lone surrogates (from JSON escapes like "\\ud800") with U+FFFD: Arrow and UTF-8
    files cannot hold them. Returns (text, replacements)."""
    try:
        s.encode("utf-8")
        return s, 0
    except UnicodeEncodeError:
        fixed = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return fixed, fixed.count("\ufffd") - s.count("\ufffd")


def decode(raw: bytes, max_invalid_fraction: float) -> tuple[str | None, int]:
    """bytes -> (text, invalid sequences replaced); text is None when more than
    `max_invalid_fraction` of the characters had to be replaced (undecodable, not text)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", "replace")
    bad = text.count("\ufffd") - raw.count(b"\xef\xbf\xbd")  # U+FFFD already in the input is not damage
    if bad > max_invalid_fraction * max(len(text), 1):
        return None, bad
    return text, bad


def control_fraction(text: str) -> float:
    if not text:
        return 0.0
    return len(_CONTROL_RE.findall(text)) / len(text)


def clean_text(text: str, cfg) -> tuple[str, dict[str, int]]:
    """Unicode normalisation, control characters removed, whitespace normalised (indentation kept).

    Returns the cleaned text and edit counters (only the non-zero ones)."""
    edits: dict[str, int] = {}
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    n_ctrl = len(_CONTROL_RE.findall(text))
    if n_ctrl:
        text = _CONTROL_RE.sub("", text)
        edits["control_chars"] = n_ctrl
    if cfg.unicode_form != "none" and not text.isascii():
        normed = unicodedata.normalize(cfg.unicode_form, text)
        if normed != text:
            edits["unicode_normalized"] = 1
            text = normed
    if not text.isascii():
        text = _SPACES_RE.sub(" ", text)
        text = _ZERO_WIDTH_RE.sub("", text)
    if cfg.strip_trailing_spaces:
        text = _TRAILING_RE.sub("", text)
    limit = cfg.max_blank_lines
    text = re.sub(rf"\n{{{limit + 2},}}", "\n" * (limit + 1), text)
    text = text.strip("\n").rstrip()
    if text.strip() == "":
        text = ""
    return text, edits


# ---------------------------------------------------------------- boilerplate lines


def _line_norm(line: str) -> str:
    return " ".join(line.split()).lower()


def line_keys(text: str, min_chars: int) -> set[int]:
    """64-bit keys of the distinct lines of a document that are long enough to be boilerplate."""
    keys = set()
    for line in text.split("\n"):
        norm = _line_norm(line)
        if len(norm) >= min_chars:
            keys.add(hash_bytes64(norm.encode("utf-8")))
    return keys


def strip_lines(text: str, boiler: set[int] | frozenset[int], min_chars: int) -> tuple[str, int]:
    """Remove boilerplate lines; returns (text, lines removed). Blank-line runs left behind are
    shortened so removed blocks do not leave holes."""
    kept, removed = [], 0
    for line in text.split("\n"):
        norm = _line_norm(line)
        if len(norm) >= min_chars and hash_bytes64(norm.encode("utf-8")) in boiler:
            removed += 1
            continue
        kept.append(line)
    if not removed:
        return text, 0
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
    return (out if out.strip() else ""), removed


# ---------------------------------------------------------------- PII

_EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b")
_IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
# Candidates only; ipaddress.ip_address decides (so times like 10:30:45 are left alone).
_IPV6_RE = re.compile(r"(?<![\w:])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?![\w:])")
_PHONE_RE = re.compile(r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w.-]*\d)")


def _ip_ok_to_redact(s: str, only_public: bool) -> bool:
    if ":" in s and sum(1 for g in s.split(":") if g) < 3:
        return False  # slices like seq[1::2] parse as IPv6; real addresses have more groups
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    return ip.is_global if only_public else True


def redact_pii(text: str, cfg) -> tuple[str, dict[str, int]]:
    """Replace emails, IP addresses and phone numbers by placeholders. Returns (text, counts)."""
    counts: dict[str, int] = {}

    def sub(pattern, repl_text, key, check=None):
        nonlocal text

        def repl(m):
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[key] = counts.get(key, 0) + 1
            return repl_text

        text = pattern.sub(repl, text)

    if cfg.emails and "@" in text:
        sub(_EMAIL_RE, cfg.email_replacement, "pii_emails")
    if cfg.ips:
        sub(_IPV4_RE, cfg.ip_replacement, "pii_ips", lambda s: _ip_ok_to_redact(s, cfg.only_public_ips))
        if "::" in text or text.count(":") >= 3:
            sub(_IPV6_RE, cfg.ip_replacement, "pii_ips", lambda s: _ip_ok_to_redact(s, cfg.only_public_ips))
    if cfg.phones:
        sub(_PHONE_RE, cfg.phone_replacement, "pii_phones", _looks_like_phone)
    return text, counts


def _looks_like_phone(s: str) -> bool:
    digits = sum(c.isdigit() for c in s)
    if not 9 <= digits <= 15:
        return False
    # Dates and version-like runs (2023-01-15, 1.2.3.4) are not phone numbers.
    if re.fullmatch(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}", s) or re.fullmatch(r"[\d.]+", s) and s.count(".") >= 3:
        return False
    return bool(re.search(r"[ .()-]", s)) or s.startswith("+")
