"""The plugin contract's helpers: per-arch parameters, template checks, and the guards on
upstream strings (URL confinement, artifact URLs, the bounded name matcher)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import Field

from containerdisks.api import (
    Artifact,
    DiscoveryRequest,
    NameMatcher,
    SourceError,
    SourceParams,
    check_placeholders,
    url_in_directory,
)


class Defaults(SourceParams):
    url: str = "https://example.org/{version}"


class Required(SourceParams):
    url: str = Field(description="no default")


def test_params_for_gives_the_arch_its_own_or_the_defaults() -> None:
    own = Defaults(url="https://mirror.example/{arch}")
    request = DiscoveryRequest("d", "1", ("x86_64", "aarch64"), {"x86_64": own})
    assert own is request.params_for("x86_64", Defaults)
    assert Defaults() == request.params_for("aarch64", Defaults)


def test_params_for_missing_or_foreign_parameters_name_the_entry_and_arch() -> None:
    request = DiscoveryRequest("d", "1", ("x86_64", "s390x"), {"x86_64": Defaults()})
    with pytest.raises(SourceError, match=r"^d: no Required for s390x$"):
        request.params_for("s390x", Required)
    with pytest.raises(SourceError, match=r"^d: Defaults for x86_64, not Required$"):
        request.params_for("x86_64", Required)


def test_check_placeholders() -> None:
    check_placeholders("url", "https://x/{version}/{arch}-\\d{2}", {"version", "arch"})
    with pytest.raises(ValueError, match=r"url uses unknown placeholder \{vesion\} .*; a hint"):
        check_placeholders("url", "https://x/{vesion}", {"version"}, "a hint")


# -- URLs built from upstream names ---------------------------------------------------------------

DIR = "https://mirror.example/pub/images/"


@pytest.mark.parametrize(
    "url",
    [
        DIR + "..",
        DIR + "%2e%2e",
        DIR + "%2E%2E/x.qcow2",
        DIR + "..%2fx.qcow2",
        DIR + "%252e%252e/x.qcow2",
        DIR + "a/../../x.qcow2",
        DIR + ".",
        DIR,
        DIR + "..\\x.qcow2",
        "https://evil.example/pub/images/x.qcow2",
        "http://mirror.example/pub/images/x.qcow2",
        "https://mirror.example:8443/pub/images/x.qcow2",
        "https://mirror.example/pub/imagesx/x.qcow2",
        DIR + "x.qcow2?file=../y",
        DIR + "x.qcow2#frag",
        DIR + "x\x00.qcow2",
        DIR + "x .qcow2",
        "/pub/images/x.qcow2",
    ],
)
def test_a_url_from_a_name_never_leaves_its_directory(url: str) -> None:
    with pytest.raises(SourceError) as err:
        url_in_directory(DIR, url)
    message = str(err.value)
    assert "\n" not in message
    assert repr(url) in message


@pytest.mark.parametrize("url", [DIR + "x.qcow2", DIR + "sub/x.qcow2", DIR + "a%20b.img"])
def test_a_url_inside_its_directory_is_kept(url: str) -> None:
    assert url == url_in_directory(DIR, url)


@pytest.mark.parametrize(
    "url", ["u", "ftp://h/x", "https://h/x\x00y", "https://h/x y", "https:///x"]
)
def test_an_artifact_url_is_absolute_http_without_controls(url: str) -> None:
    with pytest.raises(SourceError, match="download URL"):
        Artifact(arch="x86_64", url=url, checksum="0" * 64)


# -- catalog regexes against upstream names ----------------------------------------------------


async def test_a_catastrophic_pattern_fails_in_bounded_time_without_blocking_the_loop() -> None:
    names = ["a" * 200 + "b.qcow2", "a" * 100 + "!", "ok.qcow2"]
    matcher = NameMatcher(r"(a|a)+\.qcow2", budget=1.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match=r"took longer than 1 s") as err:
            await matcher.fullmatches(names)
    finally:
        tick.cancel()
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed  # the budget is CPU time; a loaded machine stretches it
    # The event loop ran all along: at least a tick per 50 ms on average, however loaded.
    assert ticks >= elapsed / 0.05, (ticks, elapsed)
    assert "(a|a)+" in str(err.value)


async def test_the_matcher_returns_full_matches_with_their_groups() -> None:
    matcher = NameMatcher(r"img-(?P<tag>\d+)(?P<opt>-x)?\.qcow2")
    found = await matcher.fullmatches(["img-1.qcow2", "img-2-x.qcow2", "img-3.qcow2.sig", "y"])
    assert {
        "img-1.qcow2": {"tag": "1", "opt": ""},
        "img-2-x.qcow2": {"tag": "2", "opt": "-x"},
    } == found
    assert {"tag": 1, "opt": 2} == dict(matcher.groupindex)


def test_an_invalid_pattern_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a valid regex"):
        NameMatcher("(unclosed")
