"""The Quay API client against the fake Quay (tests/support/fake_quay.py) on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from containerdisks.docs.quay import QuayClient, QuayError
from containerdisks.oci.redact import MASK
from tests.support.fake_quay import FakeQuay, free_port

TOKEN = "s3cr3t-quay-token"
REPO = "/api/v1/repository/containerdisks/fedora"


async def _no_sleep(_: float) -> None:
    return None


def client(
    url: str, *, token: str = TOKEN, attempts: int = 3, read_timeout: float = 5.0
) -> QuayClient:
    return QuayClient(url, token, attempts=attempts, read_timeout=read_timeout, sleep=_no_sleep)


async def test_description_then_visibility_exact_requests() -> None:
    async with FakeQuay(TOKEN, ["containerdisks/fedora"]) as quay, client(quay.url + "/") as c:
        await c.set_description("containerdisks", "fedora", "# Fedora\n\nhello `x`\n")
        await c.make_public("containerdisks", "fedora")
    sent = [(r.method, r.path, r.json) for r in quay.requests]
    assert [
        ("PUT", REPO, {"description": "# Fedora\n\nhello `x`\n"}),
        ("POST", REPO + "/changevisibility", {"visibility": "public"}),
    ] == sent
    for r in quay.requests:
        assert f"Bearer {TOKEN}" == r.headers["Authorization"]
        assert "application/json" == r.headers["Content-Type"]
        assert json.loads(r.body) == r.json  # the body is exactly the JSON document
    state = quay.repositories["containerdisks/fedora"]
    assert ("# Fedora\n\nhello `x`\n", "public") == (state.description, state.visibility)


async def test_401_is_one_line_with_quays_message_and_not_retried() -> None:
    async with FakeQuay("another-token", ["containerdisks/fedora"]) as quay, client(quay.url) as c:
        with pytest.raises(QuayError) as err:
            await c.set_description("containerdisks", "fedora", "x")
    assert f"PUT {REPO}: HTTP 401 Unauthorized: Invalid bearer token format" == str(err.value)
    assert 1 == len(quay.requests)


async def test_404_names_the_path() -> None:
    async with FakeQuay(TOKEN, []) as quay, client(quay.url) as c:
        with pytest.raises(QuayError, match=f"^PUT {REPO}: HTTP 404 Not Found: Not Found$"):
            await c.set_description("containerdisks", "fedora", "x")


async def test_500_is_retried_then_succeeds() -> None:
    async with FakeQuay(TOKEN, ["containerdisks/fedora"]) as quay, client(quay.url) as c:
        quay.respond("PUT", REPO, 500, times=2)
        await c.set_description("containerdisks", "fedora", "x")
    assert ["PUT", "PUT", "PUT"] == [r.method for r in quay.requests]
    assert ["description"] == quay.repositories["containerdisks/fedora"].history


async def test_5xx_retries_are_bounded() -> None:
    async with FakeQuay(TOKEN, ["containerdisks/fedora"]) as quay, client(quay.url) as c:
        quay.respond("PUT", REPO, 503, times=None, body={"detail": "down for maintenance"})
        with pytest.raises(QuayError) as err:
            await c.set_description("containerdisks", "fedora", "x")
    assert (
        f"PUT {REPO}: HTTP 503 Service Unavailable: down for maintenance (after 3 attempts)"
        == str(err.value)
    )
    assert 3 == len(quay.requests)


async def test_connection_refused_is_retried_then_one_line() -> None:
    port = free_port()
    async with client(f"http://127.0.0.1:{port}", attempts=2) as c:
        with pytest.raises(QuayError) as err:
            await c.make_public("containerdisks", "fedora")
    message = str(err.value)
    assert message.startswith(
        f"POST {REPO}/changevisibility: cannot connect to http://127.0.0.1:{port}"
    )
    assert message.endswith("(after 2 attempts)")
    assert "\n" not in message


async def test_a_silent_server_times_out() -> None:
    async with FakeQuay(TOKEN, ["containerdisks/fedora"]) as quay:
        quay.respond("PUT", REPO, 200, body={}, delay=2.0, times=None)
        async with client(quay.url, attempts=2, read_timeout=0.2) as c:
            with pytest.raises(
                QuayError,
                match=re.escape(
                    "timed out (no answer within 0.2s, or not all of it within 15.4s) "
                    "(after 2 attempts)"
                ),
            ):
                await c.set_description("containerdisks", "fedora", "x")
    assert 2 == len(quay.requests)


@pytest.mark.parametrize(
    "echo",
    [
        TOKEN,
        base64.b64encode(TOKEN.encode()).decode(),
        urllib.parse.quote(f"Bearer {TOKEN}", safe=""),
    ],
    ids=["raw", "base64", "percent-encoded"],
)
async def test_a_token_echoed_by_the_server_is_masked(echo: str) -> None:
    async with FakeQuay(TOKEN, ["containerdisks/fedora"]) as quay, client(quay.url) as c:
        quay.respond("PUT", REPO, 400, body={"error_message": f"bad token {echo}"})
        with pytest.raises(QuayError) as err:
            await c.set_description("containerdisks", "fedora", "x")
    assert echo not in str(err.value)
    assert TOKEN not in str(err.value)
    assert f"bad token {'Bearer%20' if '%' in echo else ''}{MASK}" in str(err.value)


async def test_a_body_that_is_not_json_is_shown_on_one_line() -> None:
    async with FakeQuay(TOKEN, ["containerdisks/fedora"]) as quay, client(quay.url) as c:
        quay.respond("PUT", REPO, 403, body="<html>\n<b>Forbidden</b>\n</html>")
        with pytest.raises(QuayError) as err:
            await c.set_description("containerdisks", "fedora", "x")
    assert f"PUT {REPO}: HTTP 403 Forbidden: <html> <b>Forbidden</b> </html>" == str(err.value)


async def hostile_quay(body: Callable[[web.StreamResponse], Awaitable[None]], status: int) -> Any:
    """A loopback server answering every PUT with `status` and a body `body` writes."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await body(response)
        return response

    app = web.Application()
    app.router.add_put("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def endless(response: web.StreamResponse) -> None:
    for _ in range(100_000):  # bounded: 6 GiB at most; the client stops reading long before
        await response.write(b"x" * 65536)


async def trickle(response: web.StreamResponse) -> None:
    for _ in range(60):  # a byte every 0.2 s (within the read timeout), 12 s in all
        await response.write(b"x")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("status", [200, 400])
async def test_an_endless_answer_is_not_read_to_its_end(status: int) -> None:
    server = await hostile_quay(endless, status)
    try:
        async with client(str(server.make_url("")), attempts=1) as c:
            started = time.monotonic()
            if status == 200:
                await c.set_description("containerdisks", "fedora", "x")
            else:
                with pytest.raises(QuayError) as err:
                    await c.set_description("containerdisks", "fedora", "x")
                assert str(err.value).startswith(f"PUT {REPO}: HTTP 400 Bad Request: xxxx")
                assert str(err.value).endswith("...")
        assert time.monotonic() - started < 30
    finally:
        await server.close()


async def test_a_trickled_answer_is_cut_by_the_total_deadline() -> None:
    server = await hostile_quay(trickle, 400)
    try:
        url = str(server.make_url(""))
        quay = QuayClient(url, TOKEN, attempts=1, connect_timeout=0.5, read_timeout=0.5)
        async with quay as c:
            started = time.monotonic()
            with pytest.raises(QuayError) as err:
                await c.set_description("containerdisks", "fedora", "x")
            took = time.monotonic() - started
    finally:
        await server.close()
    assert "timed out (no answer within 0.5s, or not all of it within 1.5s)" in str(err.value)
    assert took < 10
