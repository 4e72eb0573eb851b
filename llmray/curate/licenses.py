"""Repository licence detection: the text of LICENSE/COPYING files -> SPDX identifier.

Data flow: licence file names (`is_license_file`) --their text--> `detect` --> an SPDX id or None.
An `SPDX-License-Identifier:` line wins; otherwise the normalised text (lower case, whitespace
collapsed, quotes unified) is matched against phrases that only that licence's official text
holds. Titles are matched in the head of the file only, because licence texts mention each other
(GPL-3.0 ends by recommending "the GNU Lesser General Public License"). The table is ordered from
specific to general (LGPL before GPL, BSD-3 before BSD-2, ISC before 0BSD). This is a phrase
matcher for the common licences, not full SPDX template matching: a licence outside the table,
or a heavily edited text, is "unknown" (kept only with `license.allow_unknown`).
"""

from __future__ import annotations

import re

_HEAD = 400  # characters of normalised text in which a title must appear
_SPDX_RE = re.compile(r"spdx-license-identifier:\s*([A-Za-z0-9.+-]+(?:\s+(?:OR|AND|WITH)\s+[A-Za-z0-9.+-]+)*)",
                      re.IGNORECASE)
_LICENSE_NAME_RE = re.compile(r"^(licen[cs]e|copying|unlicense)([-._].*)?$", re.IGNORECASE)

# (SPDX id, phrases required in the head, phrases required anywhere, phrases that must be absent)
RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("AGPL-3.0", ("gnu affero general public license",), ("version 3",), ()),
    ("LGPL-3.0", ("gnu lesser general public license", "version 3"), (), ()),
    ("LGPL-2.1", ("gnu lesser general public license", "version 2.1"), (), ()),
    ("LGPL-2.0", ("gnu library general public license", "version 2"), (), ()),
    ("GPL-3.0", ("gnu general public license", "version 3, 29 june 2007"), (), ()),
    ("GPL-2.0", ("gnu general public license", "version 2, june 1991"), (), ()),
    ("Apache-2.0", ("apache license",), ("version 2.0",), ()),
    ("MPL-2.0", ("mozilla public license version 2.0",), (), ()),
    ("BSD-3-Clause", (), ("redistribution and use in source and binary forms",
                          "neither the name of"), ()),
    ("BSD-2-Clause", (), ("redistribution and use in source and binary forms",
                          "this list of conditions and the following disclaimer"), ()),
    ("MIT", (), ("permission is hereby granted, free of charge, to any person obtaining a copy",), ()),
    ("ISC", (), ("permission to use, copy, modify, and/or distribute this software for any purpose",
                 "provided that the above copyright notice and this permission notice appear in all copies"), ()),
    ("0BSD", (), ("permission to use, copy, modify, and/or distribute this software for any purpose",), ()),
    ("Unlicense", (), ("this is free and unencumbered software released into the public domain",), ()),
    ("CC0-1.0", ("cc0 1.0 universal",), (), ()),
    ("Zlib", (), ("altered source versions must be plainly marked as such",), ()),
)


def normalize(text: str) -> str:
    text = text.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.lower().split())


def is_license_file(name: str) -> bool:
    """LICENSE, LICENCE, COPYING, UNLICENSE with any suffix (LICENSE.md, LICENSE-MIT, COPYING.txt)."""
    return bool(_LICENSE_NAME_RE.match(name))


def detect(text: str) -> str | None:
    """The SPDX id of one licence file's text, or None when it matches no known licence."""
    if m := _SPDX_RE.search(text[:2000]):
        return m.group(1)
    norm = normalize(text)
    head = norm[:_HEAD]
    for spdx, in_head, anywhere, absent in RULES:
        if all(p in head for p in in_head) and all(p in norm for p in anywhere) \
                and not any(p in norm for p in absent):
            return spdx
    return None


def combine(found: dict[str, str | None]) -> str | None:
    """One repository licence from its licence files ({file name: SPDX id or None}): several
    distinct licences (LICENSE-MIT + LICENSE-APACHE) are a choice, written `A OR B`."""
    ids = sorted({v for v in found.values() if v})
    return " OR ".join(ids) if ids else None


def allowed(license_id: str | None, allow: list[str], allow_unknown: bool) -> bool:
    if license_id is None:
        return allow_unknown
    return any(part.strip() in allow for part in license_id.split(" OR "))
