"""Every upstream transfer is bounded: the guard alone, then HttpUpstream against hostile servers.

The servers are the real loopback `UpstreamServer` with streamed answers: a body that trickles,
one that never ends, metadata of 17 MiB, JSON nested 100 000 deep. Windows and deadlines are
small (a second or two) and every time bound is asserted with a wide margin.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from containerdisks.api import SourceError, UpstreamError
from containerdisks.retry import RetryPolicy
from containerdisks.upstream import (
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    DownloadInterruptedError,
    HttpUpstream,
    Mirrors,
    TransferGuard,
    json_depth,
)
from tests.support.upstream_server import UpstreamServer, put

URL = "https://example.org/meta/releases.json"
IMAGE = "https://example.org/images/disk.qcow2"


def trickle(
    data: bytes = b"x", every: float = 0.2, total: int | None = None
) -> Callable[[], AsyncIterator[bytes]]:
    """A body of `data` repeated, one piece every `every` seconds, for ever or `total` pieces."""

    async def body() -> AsyncIterator[bytes]:
        n = 0
        while total is None or n < total:
            yield data
            n += 1
            await asyncio.sleep(every)

    return body


async def _no_sleep(_: float) -> None:
    return None


def client(srv: UpstreamServer, **kw: object) -> HttpUpstream:
    return HttpUpstream(
        Mirrors(srv.mirrors()),
        retry=RetryPolicy(attempts=2, base_delay=0.0),
        sleep=_no_sleep,
        connect_timeout=5,
        read_timeout=30,  # longer than every bound under test: they must act on their own
        **kw,  # type: ignore[arg-type]
    )


# -- the guard, alone -----------------------------------------------------------------------------


def test_guard_fails_a_window_that_brings_too_little() -> None:
    g = TransferGuard(min_rate=1000, window=2.0, deadline=100.0, start=10.0)
    assert 12.0 == g.next_check()
    g.record(1999)
    assert g.check(11.9) is None
    assert g.check(12.0) == (
        "download slower than min_transfer_rate (1000 bytes/s) over 2 s "
        "(1999 bytes in the last window)"
    )
    assert g.failure == g.check(50.0)  # the first reason sticks


def test_guard_passes_windows_that_bring_enough_and_restarts_counting() -> None:
    g = TransferGuard(min_rate=1000, window=2.0, deadline=100.0, start=0.0)
    g.record(2000)
    assert g.check(2.0) is None
    assert 4.0 == g.next_check()
    g.record(10)
    assert g.check(4.5) is not None  # the second window brought 10 bytes
    assert 2010 == g.total


def test_guard_deadline_and_rate_off() -> None:
    g = TransferGuard(min_rate=0, window=2.0, deadline=5.0, start=0.0)
    assert 5.0 == g.next_check()
    assert g.check(4.9) is None
    assert "download not finished within download_deadline (5 s)" == g.check(5.0)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ('"[[[["', 0),
        ("[]", 1),
        ('{"a": [1, {"b": "]]]{{{"}], "c": "\\"["}', 3),
        ("[" * 100 + "]" * 100, 100),
        ('[["unterminated [[[', 2),  # as the parser sees it: the rest is inside the string
    ],
)
def test_json_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert depth == json_depth(text)


def test_json_depth_of_16_mib_of_brackets_is_quick() -> None:
    started = time.monotonic()
    assert 16 << 20 == json_depth("[" * (16 << 20))
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "text",
    ['"' + '\\"' * (1 << 20), '"a", ' * (1 << 20), "[" + '"\\' * (1 << 20)],
    ids=["escaped-quotes-unterminated", "many-strings", "trailing-backslashes"],
)
def test_json_depth_is_one_linear_pass_on_hostile_strings(text: str) -> None:
    """A backtracking string pattern took 100 s on 160 KB of `\\"`: it froze the event loop."""
    started = time.monotonic()
    json_depth(text)
    assert time.monotonic() - started < 10


# -- metadata -------------------------------------------------------------------------------------


async def test_metadata_that_never_finishes_fails_within_the_deadline(tmp_path: Path) -> None:
    async with UpstreamServer(tmp_path) as srv:
        srv.respond_stream(URL, trickle(b" ", every=0.1), content_length=1000)
        async with client(srv, metadata_deadline=1.5) as up:
            started = time.monotonic()
            with pytest.raises(UpstreamError) as e:
                await up.get_json(URL)
            took = time.monotonic() - started
    assert 1.0 < took < 10, took
    note = srv.mirror_note(URL)
    assert f"{URL}: no complete answer within metadata_deadline (1.5 s){note}" == str(e.value)


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_metadata_over_16_mib_is_refused(tmp_path: Path, announced: bool) -> None:
    big = b"[" + b" " * MAX_METADATA_BYTES + b"]"
    async with UpstreamServer(tmp_path) as srv:
        if announced:
            put(srv.root, URL, big)
        else:
            srv.respond_stream(URL, trickle(big[: 1 << 20], every=0, total=17))
        async with client(srv) as up:
            with pytest.raises(UpstreamError) as e:
                await up.get_json(URL)
    message = str(e.value)
    assert message.startswith(f"{URL}: metadata ")
    assert f"larger than {MAX_METADATA_BYTES} bytes" in message
    assert "\n" not in message


async def test_metadata_of_16_mib_is_read(tmp_path: Path) -> None:
    doc = json.dumps([{"pad": "x" * ((16 << 20) - 100)}]).encode()
    assert len(doc) <= MAX_METADATA_BYTES
    async with UpstreamServer(tmp_path) as srv:
        put(srv.root, URL, doc)
        async with client(srv) as up:
            assert 1 == len(await up.get_json(URL))


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
async def test_deeply_nested_json_is_one_line_naming_the_url(tmp_path: Path, depth: int) -> None:
    async with UpstreamServer(tmp_path) as srv:
        put(srv.root, URL, "[" * depth + "]" * depth)
        async with client(srv) as up:
            with pytest.raises(SourceError) as e:
                await up.get_json(URL)
            put(srv.root, URL, "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
            up.new_pass()
            assert [] != await up.get_json(URL)  # the deepest allowed still parses
    assert f"{URL}: JSON nested {depth} deep, more than {MAX_JSON_DEPTH}" == str(e.value)


async def test_a_number_too_long_to_convert_is_malformed_json(tmp_path: Path) -> None:
    async with UpstreamServer(tmp_path) as srv:
        put(srv.root, URL, "[" + "9" * 5000 + "]")
        async with client(srv) as up:
            with pytest.raises(SourceError) as e:
                await up.get_json(URL)
    assert str(e.value).startswith(f"{URL}: malformed JSON: ")
    assert "\n" not in str(e.value)


# -- image downloads ------------------------------------------------------------------------------


async def _drain(up: HttpUpstream, url: str) -> int:
    n = 0
    async with up.download(url) as dl:
        async for chunk in dl.chunks:
            n += len(chunk)
    return n


async def test_a_trickling_download_fails_within_the_rate_window_as_transient(
    tmp_path: Path,
) -> None:
    async with UpstreamServer(tmp_path) as srv:
        srv.respond_stream(IMAGE, trickle(b"x", every=0.2), content_length=1 << 30)
        async with client(srv, min_transfer_rate=1000, rate_window=1.0) as up:
            started = time.monotonic()
            with pytest.raises(DownloadInterruptedError) as e:
                await _drain(up, IMAGE)
            took = time.monotonic() - started
    assert 0.9 < took < 8, took
    message = str(e.value)
    assert message.startswith(
        f"{IMAGE}: download slower than min_transfer_rate (1000 bytes/s) over 1 s ("
    )
    assert "\n" not in message


async def test_a_stalled_consumer_does_not_hide_a_slow_download(tmp_path: Path) -> None:
    """The watchdog fails the download even when nobody is reading at that moment."""
    async with UpstreamServer(tmp_path) as srv:
        srv.respond_stream(IMAGE, trickle(b"x", every=0.2), content_length=1 << 30)
        up = client(srv, min_transfer_rate=1000, rate_window=0.5)
        async with up, up.download(IMAGE) as dl:
            await anext(dl.chunks)
            await asyncio.sleep(1.5)  # two windows pass while the consumer is busy
            with pytest.raises(DownloadInterruptedError, match="slower than"):
                await anext(dl.chunks)


async def test_a_download_past_its_deadline_fails_even_at_a_good_rate(tmp_path: Path) -> None:
    async with UpstreamServer(tmp_path) as srv:
        srv.respond_stream(IMAGE, trickle(b"x" * 100_000, every=0.05))
        async with client(srv, min_transfer_rate=1000, rate_window=0.5, download_deadline=2) as up:
            started = time.monotonic()
            with pytest.raises(DownloadInterruptedError) as e:
                await _drain(up, IMAGE)
            took = time.monotonic() - started
    assert 1.9 < took < 8, took
    note = srv.mirror_note(IMAGE)
    assert f"{IMAGE}: download not finished within download_deadline (2 s){note}" == str(e.value)


async def test_a_fast_download_is_untouched_by_the_guard(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000
    async with UpstreamServer(tmp_path) as srv:
        put(srv.root, IMAGE, data)
        async with client(srv, min_transfer_rate=1_000_000, rate_window=0.2) as up:
            assert len(data) == await _drain(up, IMAGE)
            await asyncio.sleep(0.5)  # the download is over: no watchdog may fire now


# -- bytes as stored: no content coding -------------------------------------------------------


async def test_bytes_are_asked_for_as_stored_and_a_content_coding_is_refused(
    tmp_path: Path,
) -> None:
    """aiohttp's static handler serves `x.gz` for `x` to a client accepting gzip: we never do,
    and a server that content-encodes anyway is refused instead of being decoded unbounded."""
    image = b"disk bytes " * 1000
    with UpstreamServer(tmp_path / "up") as srv:
        put(srv.root, IMAGE, image)
        put(srv.root, IMAGE + ".gz", gzip.compress(image))
        async with client(srv) as up, up.download(IMAGE) as dl:
            got = b"".join([c async for c in dl.chunks])
        assert image == got
        assert {"identity"} == {r.headers.get("Accept-Encoding") for r in srv.requests}
        srv.respond(URL, 200, body=gzip.compress(b"[]"), headers={"Content-Encoding": "gzip"})
        async with client(srv) as up:
            with pytest.raises(UpstreamError) as e:
                await up.get_json(URL)
    note = srv.mirror_note(URL)
    assert f"{URL}: answered with Content-Encoding 'gzip', not asked for{note}" == str(e.value)


# -- mirrors in errors ----------------------------------------------------------------------------


async def test_an_http_failure_names_the_mirror_url_beside_the_canonical_one(
    tmp_path: Path,
) -> None:
    """An air-gapped site sees which of its servers failed: the URL actually asked, after a
    redirect too (the redirect target is mirrored as well)."""
    moved = "https://cdn.example.org/images/gone.img"
    async with UpstreamServer(tmp_path) as srv:
        srv.respond(URL, 302, headers={"Location": moved})
        async with client(srv) as up:
            with pytest.raises(UpstreamError) as e:
                await up.get_bytes(URL)
        port = srv.port
    asked = f"http://127.0.0.1:{port}/cdn.example.org/images/gone.img"
    assert f"{URL}: HTTP 404 Not Found (mirror {asked})" == str(e.value)
    assert (URL, asked) == (e.value.url, e.value.mirror)


async def test_without_a_mirror_an_error_names_the_canonical_url_alone(tmp_path: Path) -> None:
    async with UpstreamServer(tmp_path) as srv:
        url = f"{srv.base_url}nowhere/missing.json"
        async with HttpUpstream(retry=RetryPolicy(attempts=1), sleep=_no_sleep) as up:
            with pytest.raises(UpstreamError) as e:
                await up.get_bytes(url)
    assert f"{url}: HTTP 404 Not Found" == str(e.value)
