"""The tag policy: the timestamp tag's format, reading one back, what is not one, the tag order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from containerdisks.tags import (
    is_timestamp_tag,
    parse_timestamp_tag,
    published_versions,
    tag_order,
    timestamp_tag,
    timestamp_tags,
)


def test_a_timestamp_tag_is_the_version_and_the_utc_minute() -> None:
    when = datetime(2024, 6, 1, 15, 30, 59, tzinfo=UTC)
    assert "40-2406011530" == timestamp_tag("40", when)
    # the same instant seen from UTC+2 gives the same tag
    assert "40-2406011530" == timestamp_tag("40", when.astimezone(timezone(timedelta(hours=2))))


@pytest.mark.parametrize("version", ["40", "41-beta", "9-latest", "13-20250814-2204"])
def test_a_timestamp_tag_reads_back_as_what_made_it(version: str) -> None:
    when = datetime(2031, 12, 31, 23, 59, tzinfo=UTC)
    assert (version, when) == parse_timestamp_tag(timestamp_tag(version, when))


@pytest.mark.parametrize(
    "tag",
    [
        "13",
        "latest",
        "9-latest",
        "42-1.1",
        "13-20250814-2204",  # Debian's unique tag
        "13-2413010000",  # month 13: ten digits, but no time
        "13-2401320000",  # day 32
        "13-2401012400",  # hour 24
        "13-240101000",  # 9 digits
        "13-24010100000",  # 11 digits
        "-2401010000",  # no version
    ],
)
def test_look_alikes_are_not_timestamp_tags(tag: str) -> None:
    assert parse_timestamp_tag(tag) is None


@pytest.mark.parametrize(
    ("version", "tag", "expected"),
    [
        ("13", "13-2401010000", True),
        ("13", "13-20250814-2204", False),  # Debian's unique tag
        ("9", "9-latest", False),
        ("42", "42-1.1", False),
        ("13", "13", False),
        ("1", "13-2401010000", False),  # another version's
        ("13", "113-2401010000", False),
        ("13", "13-2413010000", False),  # month 13: not a stamp
        ("13", "13-240101000", False),  # 9 digits
        ("13", "13-24010100000", False),  # 11 digits
        ("41-beta", "41-beta-2401010000", True),
        ("41", "41-beta-2401010000", False),
    ],
)
def test_only_the_entrys_own_timestamp_tags_are_candidates(
    version: str, tag: str, expected: bool
) -> None:
    assert expected == is_timestamp_tag(version, tag)


def test_newest_first_and_the_versions_published() -> None:
    tags = ["13-2401010000", "13-2512312359", "13", "13-2406010000", "12-2401010000", "9-latest"]
    assert ["13-2512312359", "13-2406010000", "13-2401010000"] == timestamp_tags("13", tags)
    # 12 has a stamp but no moving tag: not something this tool published as a version.
    assert ["13"] == published_versions(tags)


def test_the_tag_order_is_stamp_unique_version_latest() -> None:
    stamp = "13-2508142204"
    assert [stamp, "13-20250814-2204", "13", "latest"] == tag_order(
        "13", unique=["13-20250814-2204"], latest=True, stamp=stamp
    )
    assert ["40-1.14", "40"] == tag_order("40", unique=["40-1.14"], latest=False)
    assert ["9", "latest"] == tag_order("9", latest=True)


def test_a_moving_tag_listed_twice_is_written_once_at_its_first_place() -> None:
    assert ["9-latest", "9"] == tag_order("9", unique=["9-latest", "9"], latest=False)
    assert ["13-2401010000", "latest", "13"] == tag_order(
        "13", unique=["latest"], latest=True, stamp="13-2401010000"
    )
