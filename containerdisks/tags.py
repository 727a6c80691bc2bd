"""The tag policy: which tags an entry's image carries, in which order, and what a timestamp tag is.

One job: the names and the order of tags, for every command that writes, reads or shows them
(push and the daemon write them, retention and `images prune` read timestamp tags back, promote
writes the order push recorded, `catalog` and the Quay pages show them).

Decisions:
- A publish writes, in this order: the timestamp tag `<version>-<YYMMDDhhmm>` (UTC, taken once
  when the entry's publish starts), the unique tags its source reports, `<version>`, and `latest`
  when the entry carries it. Moving tags go last, so `<version>` and `latest` never point at an
  image whose fixed tags are not written yet. A moving tag listed twice (a unique tag that is
  the version) is written once, at its first place.
- A timestamp tag of a version is exactly `<version>-` followed by 10 digits that read as a UTC
  `YYMMDDhhmm`; nothing else is ever one: not `9-latest`, `42-1.1`, Debian's unique
  `13-20250814-2204`, nor another version's tags. Newest means the largest stamp.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

__all__ = [
    "LATEST",
    "STAMP_PLACEHOLDER",
    "is_timestamp_tag",
    "parse_timestamp_tag",
    "published_versions",
    "tag_order",
    "timestamp_tag",
    "timestamp_tags",
]

LATEST = "latest"
#: How the timestamp part is shown where no time is known yet (`catalog`, the Quay pages).
STAMP_PLACEHOLDER = "<YYMMDDhhmm>"

_STAMP_FORMAT = "%y%m%d%H%M"
_STAMP = re.compile(r"^(?P<version>.+)-(?P<stamp>[0-9]{10})$")


def timestamp_tag(version: str, when: datetime) -> str:
    """`<version>-<YYMMDDhhmm>` for `when`, in UTC."""
    return f"{version}-{when.astimezone(UTC).strftime(_STAMP_FORMAT)}"


def parse_timestamp_tag(tag: str) -> tuple[str, datetime] | None:
    """The version and the UTC minute of a timestamp tag; None for any other tag."""
    m = _STAMP.match(tag)
    if m is None:
        return None
    try:
        when = datetime.strptime(m["stamp"], _STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # ten digits that are no time: `13-2513010000`
        return None
    return m["version"], when


def is_timestamp_tag(version: str, tag: str) -> bool:
    """Whether `tag` is `<version>-<YYMMDDhhmm>` for exactly this `version`."""
    parsed = parse_timestamp_tag(tag)
    return parsed is not None and parsed[0] == version


def timestamp_tags(version: str, tags: Iterable[str]) -> list[str]:
    """The timestamp tags of `version` among `tags`, newest first."""
    return sorted({t for t in tags if is_timestamp_tag(version, t)}, reverse=True)


def published_versions(tags: Iterable[str]) -> list[str]:
    """Versions this tool published into a repository: a `<version>` tag and at least one
    `<version>-<YYMMDDhhmm>` tag (what `images prune` looks at for a discovering source)."""
    tagset = set(tags)
    found = set()
    for tag in tagset:
        parsed = parse_timestamp_tag(tag)
        if parsed is not None and parsed[0] in tagset:
            found.add(parsed[0])
    return sorted(found)


def tag_order(
    version: str, *, unique: Sequence[str] = (), latest: bool, stamp: str | None = None
) -> list[str]:
    """The tags of one publish in the order they are written: `stamp` (the timestamp tag, when
    given), the unique tags, `<version>`, `latest` (when `latest`); each moving tag once."""
    moving = list(dict.fromkeys([*unique, version, *([LATEST] if latest else [])]))
    return [stamp, *moving] if stamp is not None else moving
