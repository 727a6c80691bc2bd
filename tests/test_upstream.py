"""HttpUpstream against a real aiohttp server on loopback: mirrors, sharing, retries, caching."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from containerdisks.api import SourceError, UpstreamError
from containerdisks.checksums import ChecksumFormat
from containerdisks.retry import RetryPolicy
from containerdisks.upstream import HttpUpstream, Mirrors, parse_mirror


class Server:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.fail_first: dict[str, int] = {}
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        self.headers.append(dict(request.headers))
        if self.fail_first.get(path, 0) > 0:
            self.fail_first[path] -= 1
            return web.Response(status=503, headers={"Retry-After": "0"})
        if path == "/slow":
            await asyncio.sleep(0.2)
            return web.Response(text="slow")
        if path == "/etag":
            if request.headers.get("If-None-Match") == '"v1"':
                return web.Response(status=304)
            return web.Response(text="tagged", headers={"ETag": '"v1"'})
        if path == "/redirect":
            raise web.HTTPFound("http://canonical.invalid/target")
        if path == "/mirrored/target":
            return web.Response(text="via mirror after redirect")
        if path == "/sums":
            return web.Response(text="# comment\n" + "a" * 64 + "  disk.qcow2\n")
        if path == "/html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if path == "/json-bad":
            return web.Response(text="{not json")
        if path == "/missing":
            return web.Response(status=404)
        return web.Response(text=f"body of {path}")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    runner = web.AppRunner(srv.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    srv.url = f"http://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


async def no_sleep(_: float) -> None:
    return None


def upstream_for(server: Server, **kw: object) -> HttpUpstream:
    mirrors = Mirrors(
        {
            "https://example.org/": f"{server.url}/",
            "http://canonical.invalid/": f"{server.url}/mirrored/",
        }
    )
    return HttpUpstream(mirrors, sleep=no_sleep, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("table", "url", "expected"),
    [
        ({}, "https://a/x", "https://a/x"),
        ({"https://a/": "http://m/"}, "https://a/x", "http://m/x"),
        (
            {"https://a/": "http://m/", "https://a/deep/": "http://d/"},
            "https://a/deep/x",
            "http://d/x",
        ),
        (
            {"https://a/": "http://m/", "https://a/deep/": "http://d/"},
            "https://a/other",
            "http://m/other",
        ),
        ({"https://a/": "http://m/"}, "https://b/x", "https://b/x"),
    ],
)
def test_mirror_longest_prefix_wins(table: dict[str, str], url: str, expected: str) -> None:
    assert expected == Mirrors(table).rewrite(url)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("https://a/=http://b/", ("https://a/", "http://b/")),
        ("https://a/?x=1=http://b/", ("https://a/?x", "1=http://b/")),  # split on the first '='
    ],
)
def test_parse_mirror_splits_on_first_equals(spec: str, expected: tuple[str, str]) -> None:
    assert expected == parse_mirror(spec)


@pytest.mark.parametrize("spec", ["nothing", "=http://b/", "https://a/="])
def test_parse_mirror_rejects_incomplete(spec: str) -> None:
    with pytest.raises(ValueError, match="FROM=TO"):
        parse_mirror(spec)


async def test_one_request_per_url_per_pass_even_when_concurrent(server: Server) -> None:
    async with upstream_for(server) as up:
        bodies = await asyncio.gather(*(up.get_text("https://example.org/slow") for _ in range(5)))
        again = await up.get_text("https://example.org/slow")
    assert ["slow"] * 5 == bodies
    assert "slow" == again
    assert 1 == server.hits["/slow"]


async def test_new_pass_sends_conditional_request_and_reuses_body(server: Server) -> None:
    async with upstream_for(server) as up:
        first = await up.get_text("https://example.org/etag")
        up.new_pass()
        second = await up.get_text("https://example.org/etag")
    assert ("tagged", "tagged") == (first, second)
    assert 2 == server.hits["/etag"]
    assert '"v1"' == server.headers[-1].get("If-None-Match")


async def test_transient_errors_are_retried(server: Server) -> None:
    server.fail_first["/flaky"] = 2
    async with upstream_for(server, retry=RetryPolicy(attempts=3)) as up:
        assert "body of /flaky" == await up.get_text("https://example.org/flaky")
    assert 3 == server.hits["/flaky"]


async def test_retries_are_bounded_and_name_the_canonical_url(server: Server) -> None:
    server.fail_first["/down"] = 100
    async with upstream_for(server, retry=RetryPolicy(attempts=3)) as up:
        with pytest.raises(UpstreamError) as err:
            await up.get_bytes("https://example.org/down")
    assert 3 == server.hits["/down"]
    assert str(err.value).startswith("https://example.org/down: HTTP 503")
    assert "gave up after 3 attempts" in str(err.value)


async def test_not_found_is_not_retried(server: Server) -> None:
    async with upstream_for(server) as up:
        with pytest.raises(UpstreamError, match=r"^https://example.org/missing: HTTP 404"):
            await up.get_bytes("https://example.org/missing")
    assert 1 == server.hits["/missing"]


async def test_redirect_targets_go_through_the_mirror_table(server: Server) -> None:
    async with upstream_for(server) as up:
        text = await up.get_text("https://example.org/redirect")
    assert "via mirror after redirect" == text


async def test_checksums_are_parsed_and_malformed_files_named(server: Server) -> None:
    async with upstream_for(server) as up:
        sums = await up.get_checksums("https://example.org/sums", ChecksumFormat.GNU)
        with pytest.raises(SourceError, match=r"^https://example.org/html: malformed checksum"):
            await up.get_checksums("https://example.org/html", ChecksumFormat.GNU)
        with pytest.raises(SourceError, match=r"^https://example.org/json-bad: malformed JSON"):
            await up.get_json("https://example.org/json-bad")
    assert {"disk.qcow2": "a" * 64} == dict(sums)


async def test_unreachable_host_is_one_line_naming_the_url() -> None:
    # A port nothing listens on: bind, note the port, close.
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    mirrors = Mirrors({"https://gone.example/": f"http://127.0.0.1:{port}/"})
    async with HttpUpstream(mirrors, sleep=no_sleep, retry=RetryPolicy(attempts=2)) as up:
        with pytest.raises(UpstreamError) as err:
            await up.get_bytes("https://gone.example/releases.json")
    message = str(err.value)
    assert message.startswith("https://gone.example/releases.json: cannot connect to 127.0.0.1")
    assert "\n" not in message


async def test_download_streams_with_size_through_mirror_and_redirect(server: Server) -> None:
    async with upstream_for(server) as up, up.download("https://example.org/redirect") as dl:
        body = b"".join([c async for c in dl.chunks])
    assert b"via mirror after redirect" == body
    assert len(body) == dl.size
    assert "https://example.org/redirect" == dl.url


async def test_download_open_is_retried_but_errors_of_the_caller_are_not(server: Server) -> None:
    server.fail_first["/img"] = 1
    async with upstream_for(server) as up:
        with pytest.raises(TimeoutError):
            async with up.download("https://example.org/img"):
                raise TimeoutError  # e.g. the registry timed out while we streamed
    assert 2 == server.hits["/img"]
