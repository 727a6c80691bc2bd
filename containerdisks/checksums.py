"""Parsers for the checksum files distributions publish beside their images.

Two formats exist in the wild, and one file never mixes them:
- BSD (`sha256sum --tag`, CentOS, Fedora's clearsigned CHECKSUM): `SHA256 (<name>) = <hex>`
- GNU (`sha256sum`, AlmaLinux, Ubuntu, openSUSE): `<hex>  <name>` or `<hex> *<name>` (binary mode)

As medius does, lines are trimmed and lines that do not match are skipped: upstream files carry
comments, PGP armor, and (seen in the wild) wget progress output appended to the file. A file with
no checksum line at all is malformed: usually an HTML error page served with status 200.
Hex is normalised to lowercase; a name listed twice keeps its last checksum.
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = ["ChecksumFormat", "ChecksumParseError", "parse_checksum_file"]


class ChecksumFormat(StrEnum):
    BSD = "bsd"
    GNU = "gnu"


class ChecksumParseError(ValueError):
    """The text holds no checksum line in the expected format."""


_BSD = re.compile(r"^SHA(?:256|512)\s+\((?P<name>.+)\)\s+=\s+(?P<hex>[0-9a-fA-F]+)$")
_GNU = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s+\*?(?P<name>\S+)$")


def parse_checksum_file(text: str, fmt: ChecksumFormat | str) -> dict[str, str]:
    """Return `file name -> lowercase hex` for every well-formed line of `text`."""
    pattern = _BSD if ChecksumFormat(fmt) is ChecksumFormat.BSD else _GNU
    out: dict[str, str] = {}
    for raw in text.splitlines():
        m = pattern.match(raw.strip())
        if m:
            out[m.group("name")] = m.group("hex").lower()
    if not out:
        raise ChecksumParseError(f"no {ChecksumFormat(fmt).value.upper()} checksum line found")
    return out
