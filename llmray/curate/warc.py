"""WARC reading for `type: warc` sources, and the URL block/allow lists applied while reading.

Data flow per file: a pyarrow.fs stream (local path or object-store URI, compressed bytes as
stored) --fastwarc ArchiveIterator (gzip detected from the stream, one record at a time, so a file
is never held in memory)--> `response` records (request/metadata/warcinfo records are not
documents and are skipped by the parser) --> per record:
- URL on a block list / off the allow lists: row removed by `url_filter` (the body is not decoded);
- HTTP content type not HTML: removed by `extract` as `not_html` (when `extract.html_only`);
- body shorter than the Content-Length (cut file) or marked `WARC-Truncated`: quarantined `truncated`;
- HTTP headers that do not parse (and the record is not cut): quarantined `bad_http`;
- body not decodable in its charset (HTTP header, else detected by resiliparse): quarantined
  `undecodable_bytes`;
- else a row whose text is the decoded HTML and whose meta has url, timestamp, record_id, charset
  and content_type.
A record or file that fastwarc cannot parse ends the file with an `unreadable_file` quarantine row
(see `readers._files`).

The `extract` operator then turns each batch of these rows (`batch_size`, 256) into main text in the
same read task, before the batch becomes an Arrow block (`extract.read_extractor`), not once per
record inside this loop: measured in one process, a call between record parses cost ~18% more CPU
than the same extractor over a batch of pages in a row (its parser's code and tables stay in cache),
and a separate map operator cost the stage a copy of every page's HTML through Arrow and Ray's
object store (bench/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_LISTS: dict[tuple, UrlLists] = {}


class UrlLists:
    """Domain entries (match the host and its subdomains) and URL-prefix entries, from list files."""

    def __init__(self, block: list[str], allow: list[str]):
        self.block = _load(block)
        self.allow = _load(allow) if allow else None

    def reason(self, url: str) -> str | None:
        """Why the URL is removed (`blocked_url: <entry>`, `not_allowed`), or None to keep it."""
        if hit := _match(url, *self.block):
            return f"blocked_url: {hit}"
        if self.allow is not None and not _match(url, *self.allow):
            return "not_allowed: no allow-list entry matches"
        return None


def _load(paths: list[str]) -> tuple[frozenset, tuple]:
    from llmray.curate.sources import iter_lines

    domains, prefixes = set(), []
    for p in paths:
        for _, raw in iter_lines(p):
            e = raw.decode("utf-8", "replace").split("#", 1)[0].strip().lower()
            if not e:
                continue
            if "/" in e or "://" in e:
                prefixes.append(e)
            else:
                domains.add(e.lstrip("."))
    return frozenset(domains), tuple(sorted(prefixes))


def _match(url: str, domains: frozenset, prefixes: tuple) -> str | None:
    low = url.lower()
    host = (urlsplit(low).hostname or "").rstrip(".")
    parts = host.split(".")
    for i in range(len(parts)):  # host, then each parent domain
        d = ".".join(parts[i:])
        if d in domains:
            return d
    bare = low.split("://", 1)[-1]
    for p in prefixes:
        if low.startswith(p) or bare.startswith(p):
            return p
    return None


def url_lists(cfg) -> UrlLists | None:
    """The lists of a url_filter config, loaded once per worker process."""
    if not cfg or not cfg.get("enabled") or not (cfg["block_lists"] or cfg["allow_lists"]):
        return None
    key = (tuple(cfg["block_lists"]), tuple(cfg["allow_lists"]))
    if key not in _LISTS:
        _LISTS[key] = UrlLists(cfg["block_lists"], cfg["allow_lists"])
    return _LISTS[key]


def decode_body(body: bytes, charset: str | None, max_invalid_fraction: float) -> tuple[str | None, str, int]:
    """(text or None when undecodable, the charset used, replaced sequences)."""
    from resiliparse.parse.encoding import detect_encoding

    enc = (charset or "").strip().lower() or detect_encoding(body)
    try:
        return body.decode(enc), enc, 0
    except LookupError:  # a charset Python does not know: trust the detector instead
        enc = detect_encoding(body)
    except UnicodeDecodeError:
        pass
    try:
        text = body.decode(enc, "replace")
    except LookupError:
        enc, text = "utf-8", body.decode("utf-8", "replace")
    # U+FFFD already in a UTF-8 input is not damage
    bad = text.count("\ufffd") - (body.count(b"\xef\xbf\xbd") if enc.replace("-", "") == "utf8" else 0)
    if bad > max_invalid_fraction * max(len(text), 1):
        return None, enc, bad
    return text, enc, bad


def read_warc(rows, uri: str, rel: str, task: dict, clean_cfg) -> Iterator[int]:
    """Rows for the response records of one WARC file; yields the record number after each."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from llmray.curate.sources import open_random_access

    lists = url_lists(task.get("url_filter"))
    html_only = task.get("html_only", False)
    with open_random_access(uri) as f:
        for n, rec in enumerate(ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True,
                                                fsspec_args=False), start=1):
            _record(rows, rel, n, rec, lists, html_only, clean_cfg)
            yield n


_enc = json.encoder.encode_basestring  # the (C) string encoder json.dumps(ensure_ascii=False) uses


def _meta_json(url: str, ts: str | None, rid: str, ctype: str, charset: str | None = None) -> str:
    """json.dumps(meta, ensure_ascii=False) of the record's metadata, byte for byte, without building
    a dict and running the generic encoder per record (fixed keys, string values)."""
    out = (f'{{"url": {_enc(url)}, "timestamp": {"null" if ts is None else _enc(ts)}, '
           f'"record_id": {_enc(rid)}, "content_type": {_enc(ctype)}')
    return out + (f', "charset": {_enc(charset)}}}' if charset is not None else "}")


def _record(rows, rel: str, n: int, rec, lists: UrlLists | None, html_only: bool, clean_cfg) -> None:
    url = rec.headers.get("WARC-Target-URI", "")
    rid = rec.record_id or f"{rows.task['source']}/{rel}:{n}"
    ctype = (rec.http_content_type or "").lower()
    date = rec.record_date
    ts = date.isoformat() if date else rec.headers.get("WARC-Date")
    if lists is not None and (why := lists.reason(url)):
        rows.add(rid, url, rel, n, drop="url_filter", why=why, meta_json=_meta_json(url, ts, rid, ctype))
        return
    if not rec.is_http_parsed:  # cut inside the HTTP headers, or no HTTP message at all
        expected, body = rec.content_length, rec.reader.read()
        reason = "truncated" if len(body) < expected else "bad_http"
        rows.quarantine(rel, n, reason, f"record {rid} ({url}): HTTP headers not parsed, {len(body)} of "
                                        f"{expected} bytes", body)
        return
    if html_only and ctype not in _HTML_TYPES:
        rows.add(rid, url, rel, n, drop="extract", why=f"not_html: content type {ctype or 'missing'!r}",
                 meta_json=_meta_json(url, ts, rid, ctype))
        return
    expected = rec.content_length
    body = rec.reader.read()
    if len(body) < expected:
        rows.quarantine(rel, n, "truncated", f"record {rid} ({url}): {len(body)} of {expected} bytes", body)
        return
    if cut := rec.headers.get("WARC-Truncated"):
        rows.quarantine(rel, n, "truncated", f"record {rid} ({url}) is marked WARC-Truncated: {cut}", body)
        return
    text, enc, bad = decode_body(body, rec.http_charset, clean_cfg.max_invalid_fraction)
    if text is None:
        rows.quarantine(rel, n, "undecodable_bytes", f"record {rid} ({url}): {bad} invalid {enc} sequences "
                                                     f"in {len(body)} bytes", body)
        return
    rows.add(rid, text, rel, n, edits=f"utf8_repaired={bad}" if bad else "",
             meta_json=_meta_json(url, ts, rid, ctype, enc))
