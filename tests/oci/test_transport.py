"""The HTTP boundary: redirects, timeouts, unreachable hosts, error mapping.

Small aiohttp servers on loopback play a registry front that redirects blob downloads to
another host (as Docker Hub, GCR and ECR do with their CDNs); distribution with filesystem
storage never redirects, so this behaviour cannot be shown with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from containerdisks.oci import (
    ConnectError,
    ConnectionLostError,
    ProtocolError,
    RegistryClient,
    TransportTimeoutError,
)
from tests.support.loopback import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BLOB = b'{"architecture":"amd64","os":"linux"}'
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
USER, PASSWORD = "user", "redirect-secret"


@asynccontextmanager
async def serve(host: str, routes: Mapping[str, Handler]) -> AsyncIterator[str]:
    """Serve ``routes`` (GET, path pattern -> handler) on ``host``; yields ``host:port``."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"{host}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


def basic_required(handler: Handler) -> Handler:
    async def checked(request: web.Request) -> web.StreamResponse:
        expected = aiohttp.encode_basic_auth(USER, PASSWORD)
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return await handler(request)

    return checked


async def ping(_: web.Request) -> web.Response:
    return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})


async def test_redirect_to_another_host_drops_authorization() -> None:
    seen: list[web.Request] = []

    async def cdn(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(body=BLOB)

    async with serve("127.0.0.2", {"/blob": cdn}) as cdn_host:

        async def blob(request: web.Request) -> web.Response:
            # a signed URL whose query must arrive exactly as sent
            # (web.HTTPTemporaryRedirect would re-quote it on the server side)
            location = f"http://{cdn_host}/blob?sig=ab%2Fcd%3D%3D&X-Amz=1"
            return web.Response(status=307, headers={"Location": location})

        routes = {"/v2/": ping, "/v2/r/x/blobs/{digest}": basic_required(blob)}
        async with (
            serve("127.0.0.1", routes) as host,
            RegistryClient(host, credentials=(USER, PASSWORD), insecure_skip_tls=True) as client,
        ):
            assert await client.get_blob("r/x", DIGEST, max_size=1000) == BLOB
    assert len(seen) == 1
    assert "Authorization" not in seen[0].headers
    assert seen[0].raw_path == "/blob?sig=ab%2Fcd%3D%3D&X-Amz=1"


async def test_redirect_within_the_same_origin_keeps_authorization() -> None:
    async def blob(_: web.Request) -> web.Response:
        raise web.HTTPFound("/v2/r/x/moved")

    async def moved(_: web.Request) -> web.Response:
        return web.Response(body=BLOB)

    routes = {
        "/v2/": ping,
        "/v2/r/x/blobs/{digest}": basic_required(blob),
        "/v2/r/x/moved": basic_required(moved),
    }
    async with (
        serve("127.0.0.1", routes) as host,
        RegistryClient(host, credentials=(USER, PASSWORD)) as client,
    ):
        assert await client.get_blob("r/x", DIGEST, max_size=1000) == BLOB


async def test_redirect_loops_and_redirects_without_location_are_protocol_errors() -> None:
    async def loop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/v2/r/x/blobs/again")

    async def nowhere(_: web.Request) -> web.Response:
        return web.Response(status=302)

    routes = {"/v2/": ping, "/v2/r/x/blobs/{digest}": loop, "/v2/r/y/blobs/{digest}": nowhere}
    async with serve("127.0.0.1", routes) as host, RegistryClient(host) as client:
        with pytest.raises(ProtocolError, match="more than 5 redirects"):
            await client.get_blob("r/x", DIGEST, max_size=1000)
        with pytest.raises(ProtocolError, match="redirect 302 without Location"):
            await client.get_blob("r/y", DIGEST, max_size=1000)


async def test_unreachable_registry_is_one_clear_temporary_line() -> None:
    port = free_port()  # nothing listens there any more
    async with RegistryClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(ConnectError) as caught:
            await client.get_manifest("cd/fedora", "41")
    error = caught.value
    assert str(error) == f"GET https://127.0.0.1:{port}/v2/: cannot connect: Connection refused"
    assert error.temporary
    assert error.host == "127.0.0.1"
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert not isinstance(error, aiohttp.ClientError)


async def test_a_registry_that_never_answers_times_out() -> None:
    release = asyncio.Event()

    async def stall(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async with serve("127.0.0.1", {"/v2/": ping, "/v2/r/x/manifests/{ref}": stall}) as host:
        try:
            async with RegistryClient(host, read_timeout=0.2) as client:
                with pytest.raises(TransportTimeoutError) as caught:
                    await client.get_manifest("r/x", "v1")
        finally:
            release.set()
    assert str(caught.value) == (
        f"GET http://{host}/v2/r/x/manifests/v1: timed out reading the response"
    )
    assert caught.value.temporary


async def test_a_connection_dropped_mid_body_is_connection_lost() -> None:
    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"{" * 10)
        assert request.transport is not None
        request.transport.close()
        return response

    async with (
        serve("127.0.0.1", {"/v2/": ping, "/v2/r/x/blobs/{digest}": truncated}) as host,
        RegistryClient(host) as client,
    ):
        with pytest.raises(ConnectionLostError) as caught:
            await client.get_blob("r/x", DIGEST, max_size=10_000)
    assert caught.value.temporary
    assert "\n" not in str(caught.value)
