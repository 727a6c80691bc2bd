"""Parsers for the checksum files distributions publish beside their images.

Two formats exist in the wild, and one file never mixes them:
- BSD (`sha256sum --tag`, CentOS, Fedora's clearsigned CHECKSUM): `SHA256 (<name>) = <hex>`
- GNU (`sha256sum`, AlmaLinux, Ubuntu, openSUSE): `<hex>  <name>` or `<hex> *<name>` (binary mode)

As medius does, lines are trimmed and lines that do not match are skipped: upstream files carry
comments, PGP armor, and (seen in the wild) wget progress output appended to the file. A file with
no checksum line at all is malformed: usually an HTML error page served with status 200.
Hex is normalised to lowercase; a name listed twice keeps its last checksum, as in medius,
except with `unique=True` (a signed file: the signer vouched for one checksum per name, and which
of two the reader takes must not be a choice), where a second line for a name is an error naming
it.

Upstream text is data, never structure:
- Lines end only at `\\n` (or `\\r\\n`). `str.splitlines` would also split at U+2028, U+0085,
  `\\x0b` and others, letting a name smuggle in a second checksum line.
- A name is a plain file name in the directory of the checksum file, or the line is skipped as
  malformed: no `/` or `\\`, not `.` or `..` nor containing `..`, no control characters
  (C0, DEL, C1, and the Unicode line and paragraph separators), at most 255 bytes in UTF-8.
  `file_name_problem` says why a name is refused; sources apply it to names they take from
  other upstream files too.
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = ["ChecksumFormat", "ChecksumParseError", "file_name_problem", "parse_checksum_file"]


class ChecksumFormat(StrEnum):
    BSD = "bsd"
    GNU = "gnu"


class ChecksumParseError(ValueError):
    """The text holds no checksum line in the expected format."""


_BSD = re.compile(r"^SHA(?:256|512)[ \t]+\((?P<name>.+)\)[ \t]+=[ \t]+(?P<hex>[0-9a-fA-F]+)$")
_GNU = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}|[0-9a-fA-F]{128})[ \t]+\*?(?P<name>\S+)$")
#: C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: The longest file name most file systems (and web servers) accept, in bytes.
MAX_NAME_BYTES = 255


def file_name_problem(name: str) -> str | None:
    """Why `name` is not a plain file name we may put after a directory URL; None if it is."""
    if not name:
        return "is empty"
    if _CONTROL.search(name):
        return "contains a control character"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if name in (".", "..") or ".." in name:
        return "contains '..'"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def _lines(text: str) -> list[str]:
    """Lines ended by `\\n` or `\\r\\n` only (not by U+2028, U+0085, `\\x0b`, ...)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def parse_checksum_file(
    text: str, fmt: ChecksumFormat | str, *, unique: bool = False
) -> dict[str, str]:
    """Return `file name -> lowercase hex` for every well-formed line of `text`; with `unique`,
    a name on two lines raises `ChecksumParseError` naming it."""
    pattern = _BSD if ChecksumFormat(fmt) is ChecksumFormat.BSD else _GNU
    out: dict[str, str] = {}
    for raw in _lines(text):
        m = pattern.match(raw.strip(" \t"))
        if m and file_name_problem(m.group("name")) is None:
            name = m.group("name")
            if unique and name in out:
                raise ChecksumParseError(f"{name!r} is listed twice")
            out[name] = m.group("hex").lower()
    if not out:
        raise ChecksumParseError(f"no {ChecksumFormat(fmt).value.upper()} checksum line found")
    return out
