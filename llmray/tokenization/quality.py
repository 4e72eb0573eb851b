"""How well a tokenizer compresses held-out text: the tokenizer stage's report.

held-out texts --encode (special-token strings read as plain text)--> ids
  bytes_per_token      = UTF-8 bytes / tokens        (higher = more text per context window)
  words_per_token      = whitespace-separated words / tokens
  fallback_byte_share  = bytes carried by "fallback" tokens / all bytes, where a fallback token
                         is one whose bytes are not whole characters on their own: a raw byte of a
                         multi-byte character the vocabulary has no merge for (byte-level BPE), or
                         a `<0xNN>` byte-fallback token (SentencePiece-style vocabularies)
  unk_tokens           = occurrences of the unknown token (0 for byte-level BPE by construction)
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import numpy as np

_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of the GPT-2 byte -> printable character map that ByteLevel uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _is_byte_level(tok) -> bool:
    decoder = json.loads(tok.to_str()).get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", [])]
    return "ByteLevel" in kinds


def fallback_lengths(tok) -> np.ndarray:
    """Per token id: its byte length if it is a fallback token (see module doc), else 0."""
    vocab = tok.get_vocab(with_added_tokens=True)
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    byte_level = _is_byte_level(tok)
    dec = byte_decoder()
    for token, idx in vocab.items():
        if token in special:
            continue
        if byte_level:
            try:
                raw = bytes(dec[c] for c in token)
            except KeyError:  # an added (non byte-level) token: whole characters
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                out[idx] = len(raw)
        elif _BYTE_FALLBACK.fullmatch(token):
            out[idx] = 1
    return out


def compression_report(tok, texts: list[str]) -> dict:
    """The report above for a `tokenizers.Tokenizer` on `texts` (an empty list gives None figures)."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_words = sum(len(t.split()) for t in texts)
    report = {"heldout_docs": len(texts), "heldout_bytes": n_bytes, "heldout_tokens": 0,
              "bytes_per_token": None, "words_per_token": None, "fallback_byte_share": None, "unk_tokens": 0}
    if not texts:
        return report
    old = tok.encode_special_tokens
    tok.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text, not a control token
    try:
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int64)
                              for e in tok.encode_batch_fast(texts, add_special_tokens=False)])
    finally:
        tok.encode_special_tokens = old
    fb = fallback_lengths(tok)
    unk = _unk_id(tok)
    report.update(
        heldout_tokens=len(ids),
        bytes_per_token=round(n_bytes / max(len(ids), 1), 4),
        words_per_token=round(n_words / max(len(ids), 1), 4),
        fallback_byte_share=round(float(fb[ids].sum()) / max(n_bytes, 1), 6),
        unk_tokens=int((ids == unk).sum()) if unk is not None else 0,
    )
    return report


def _unk_id(tok) -> int | None:
    unk = getattr(tok.model, "unk_token", None)
    return tok.token_to_id(unk) if unk else None
