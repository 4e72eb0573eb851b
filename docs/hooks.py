"""MkDocs build hook: fills each page's generated reference from the pydantic models.

A page holds `<!-- reference: <what> -->` (a stage kind, `pipeline` or `serve`) on a line of its
own; at build time that line becomes `llmray.schema_doc.reference(<what>)`, so the tables are made
from the models the build imports and cannot drift from them. An unknown <what> fails the build.
"""

from __future__ import annotations

import re

from llmray.schema_doc import reference

MARKER = re.compile(r"^<!-- reference: ([a-z_]+) -->$", re.M)


def expand(markdown: str) -> str:
    """The page with every reference marker replaced by its tables."""
    return MARKER.sub(lambda m: reference(m.group(1)), markdown)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs hook signature
    return expand(markdown)
