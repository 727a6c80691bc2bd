"""Upload details a real distribution cannot show: what other registries answer.

Small aiohttp servers on loopback play registries whose ``Location`` is relative with an encoded
query, or points at another host; that want chunks of at least ``OCI-Chunk-Min-Length``; that
refuse chunked transfer encoding (ACR); that paginate tags with ``Link``; that announce a digest
other than the one sent. The pure helpers of :mod:`containerdisks.oci.upload` are tested too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
import yarl
from aiohttp import web

from containerdisks.oci import (
    DOCKER_MANIFEST,
    DigestMismatchError,
    ProtocolError,
    RegistryClient,
    RegistryError,
)
from containerdisks.oci import digest as digest_module
from containerdisks.oci.client import _next_link
from containerdisks.oci.messages import Response
from containerdisks.oci.upload import default_chunk_size, next_location, with_digest

USER, PASSWORD = "user", "upload-secret"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def chunks(data: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"{host}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


@dataclass
class Seen:
    method: str
    path: str
    query: str  # raw, exactly as it arrived
    headers: dict[str, str]
    body: bytes = field(repr=False)


@dataclass
class FakeRegistry:
    """A registry front for uploads: each answer is decided by a test-supplied function."""

    seen: list[Seen] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    basic: bool = False
    post_headers: dict[str, str] = field(default_factory=dict)
    patch: Callable[[web.Request, bytes], Awaitable[web.Response]] | None = None
    tags: dict[str, tuple[list[str], str | None]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.rel_url.raw_query_string,
                dict(request.headers),
                body,
            )
        )
        if self.basic and request.headers.get("Authorization") != aiohttp.encode_basic_auth(
            USER, PASSWORD
        ):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if request.path == "/v2/":
            return web.json_response({})
        if request.method == "POST":
            return web.Response(
                status=202,
                headers={"Location": "/v2/x/blobs/uploads/u1?_state=ab%2Fcd%3D%3D&n=0"}
                | self.post_headers,
            )
        if request.method == "PATCH":
            if self.patch is not None:
                return await self.patch(request, body)
            self.received += body
            return web.Response(
                status=202,
                headers={
                    "Location": f"u1?_state=ef%2Fgh%3D%3D&n={len(self.received)}",
                    "Range": f"0-{len(self.received) - 1}",
                },
            )
        if request.method == "PUT" and "/manifests/" not in request.path:
            digest = request.query["digest"]
            return web.Response(status=201, headers={"Docker-Content-Digest": digest})
        if request.method == "PUT" and "/manifests/" in request.path:
            return web.Response(status=201, headers={"Docker-Content-Digest": sha256(b"other")})
        if request.method == "DELETE":
            return web.Response(status=204)
        if request.method == "GET" and request.path.endswith("/tags/list"):
            tags, link = self.tags[request.rel_url.raw_query_string]
            headers = {"Link": f'<{link}>; rel="next"'} if link else {}
            return web.json_response({"name": "x", "tags": tags}, headers=headers)
        return web.Response(status=404)

    def methods(self) -> list[str]:
        return [s.method for s in self.seen if s.path != "/v2/"]


async def test_relative_locations_with_encoded_state_stay_byte_exact() -> None:
    fake = FakeRegistry()
    data = os.urandom(40_000)
    async with (
        serve(fake.app()) as host,
        RegistryClient(host) as client,
        client.blob_upload("x") as upload,
    ):
        await upload.write(chunks(data))
        described = await upload.commit(sha256(data))
        assert repr(upload) == f"<BlobUpload blob upload {host}/x committed sent=40000>"
    assert described.digest == sha256(data)
    patch, put = (s for s in fake.seen if s.method in {"PATCH", "PUT"})
    # the POST's relative Location, resolved against the POST URL, query untouched
    assert (patch.path, patch.query) == ("/v2/x/blobs/uploads/u1", "_state=ab%2Fcd%3D%3D&n=0")
    # the PATCH's Location "u1?..." is relative to the PATCH URL; digest= is appended with &
    assert (put.path, put.query) == (
        "/v2/x/blobs/uploads/u1",
        f"_state=ef%2Fgh%3D%3D&n={len(data)}&digest=sha256%3A{sha256(data)[7:]}",
    )
    assert patch.headers["Transfer-Encoding"] == "chunked"
    assert patch.headers["Content-Type"] == "application/octet-stream"
    assert "Content-Range" not in patch.headers
    assert bytes(fake.received) == data


async def test_chunks_honour_oci_chunk_min_length() -> None:
    fake = FakeRegistry(post_headers={"OCI-Chunk-Min-Length": "30000"})
    data = os.urandom(70_000)
    async with (
        serve(fake.app()) as host,
        RegistryClient(host, chunk_size=10_000) as client,
        client.blob_upload("x") as upload,
    ):
        assert upload.chunk_size == 30_000
        await upload.write(chunks(data, 7_000))
        assert upload.sent == 60_000  # two full chunks acknowledged; 10 000 bytes wait
        await upload.commit()
    patches = [s for s in fake.seen if s.method == "PATCH"]
    assert [(p.headers["Content-Range"], p.headers["Content-Length"]) for p in patches] == [
        ("0-29999", "30000"),
        ("30000-59999", "30000"),
        ("60000-69999", "10000"),  # the last chunk may be shorter
    ]
    assert bytes(fake.received) == data


async def test_a_registry_refusing_chunked_transfer_encoding_gets_chunks_next_time() -> None:
    async def length_required(request: web.Request, body: bytes) -> web.Response:
        if "Content-Length" not in request.headers:
            return web.json_response(
                {"errors": [{"code": "CONTENT_LENGTH_INVALID", "message": "chunked"}]},
                status=400,
            )
        fake.received += body
        return web.Response(
            status=202,
            headers={"Location": "u1?n=1", "Range": f"0-{len(fake.received) - 1}"},
        )

    fake = FakeRegistry(patch=length_required)
    data = os.urandom(10_000)
    async with serve(fake.app()) as host, RegistryClient(host) as client:
        with pytest.raises(RegistryError) as caught:
            async with client.blob_upload("x") as upload:
                await upload.write(chunks(data))
        assert caught.value.temporary  # trying again works: below
        assert fake.methods() == ["POST", "PATCH", "DELETE"]
        async with client.blob_upload("x") as upload:
            assert upload.chunk_size == 4 * 1024 * 1024
            await upload.write(chunks(data))
            await upload.commit(sha256(data))
        # a known size goes as Content-Length without chunks, too
        fake.received.clear()
        client._chunk_size = None
        async with client.blob_upload("x") as upload:
            await upload.write(chunks(data), size=len(data))
            await upload.commit(sha256(data))
    assert bytes(fake.received) == data


async def test_a_wrong_range_is_a_protocol_error() -> None:
    async def short(request: web.Request, body: bytes) -> web.Response:
        return web.Response(status=202, headers={"Location": "u1", "Range": "0-99"})

    fake = FakeRegistry(patch=short)
    async with serve(fake.app()) as host, RegistryClient(host) as client:
        with pytest.raises(ProtocolError, match="registry has 100 bytes after a PATCH of 5000"):
            async with client.blob_upload("x") as upload:
                await upload.write(chunks(os.urandom(5000)))
    assert fake.methods()[-1] == "DELETE"


async def test_a_location_on_another_host_gets_no_credentials() -> None:
    storage = FakeRegistry()
    async with serve(storage.app(), "127.0.0.2") as storage_host:

        class Front(FakeRegistry):
            async def handle(self, request: web.Request) -> web.StreamResponse:
                response = await super().handle(request)
                if request.method == "POST" and response.status == 202:
                    response.headers["Location"] = (
                        f"http://{storage_host}/upload/u1?sig=ab%2Fcd%3D%3D"
                    )
                return response

        front = Front(basic=True)
        data = os.urandom(3000)
        async with (
            serve(front.app()) as host,
            RegistryClient(host, credentials=(USER, PASSWORD)) as client,
            client.blob_upload("x") as upload,
        ):
            await upload.write(chunks(data))
            await upload.commit()
    assert [s.method for s in storage.seen] == ["PATCH", "PUT"]
    assert all("Authorization" not in s.headers for s in storage.seen)
    assert storage.seen[0].query == "sig=ab%2Fcd%3D%3D"
    assert all("Authorization" in s.headers for s in front.seen[2:])  # after the challenge


async def test_chunks_are_hashed_off_the_event_loop_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed: list[int] = []  # bytes per hand-off to a worker thread
    real = asyncio.to_thread

    async def counting(func: Callable[..., object], /, *args: object) -> object:
        handed.append(sum(len(c) for c in args[1]))  # type: ignore[attr-defined]
        return await real(func, *args)

    monkeypatch.setattr(digest_module.asyncio, "to_thread", counting)
    batch = digest_module.HASH_BATCH
    data = os.urandom(2 * batch + 100)
    fake = FakeRegistry()
    async with (
        serve(fake.app()) as host,
        RegistryClient(host) as client,
        client.blob_upload("x") as upload,
    ):
        await upload.write(chunks(data, 1 << 20))
        descriptor = await upload.commit(sha256(data))
    # two full batches of 1 MiB chunks, one hand-off each; the 100-byte tail is hashed inline
    assert handed == [batch, batch]
    assert descriptor.digest == sha256(data) == upload.digest


async def test_tags_follow_link_pages() -> None:
    fake = FakeRegistry(
        tags={
            "n=2": (["a", "b"], "/v2/x/tags/list?n=2&last=b"),
            "n=2&last=b": (["c", "d"], "list?n=2&last=d%2B"),  # relative
            "n=2&last=d%2B": (["e"], None),
        }
    )
    async with serve(fake.app()) as host, RegistryClient(host) as client:
        assert await client.list_tags("x", page_size=2) == ["a", "b", "c", "d", "e"]
    fake.tags["n=2&last=d%2B"] = (["e"], "/v2/x/tags/list?n=2&last=b")
    async with serve(fake.app()) as host, RegistryClient(host) as client:
        with pytest.raises(ProtocolError, match="pagination loops"):
            await client.list_tags("x", page_size=2)


async def test_a_registry_announcing_another_manifest_digest() -> None:
    fake = FakeRegistry()
    data = (
        b'{"schemaVersion":2,"mediaType":"%s","config":{},"layers":[]}' % DOCKER_MANIFEST.encode()
    )
    async with serve(fake.app()) as host, RegistryClient(host) as client:
        with pytest.raises(DigestMismatchError) as caught:
            await client.put_manifest("x", "v1", DOCKER_MANIFEST, data)
    assert str(caught.value) == (
        f"manifest {host}/x:v1 (as the registry stored it): digest mismatch: "
        f"expected {sha256(data)}, got {sha256(b'other')}"
    )
    put = next(s for s in fake.seen if s.method == "PUT")
    assert put.headers["Content-Type"] == DOCKER_MANIFEST
    assert put.body == data


# -- the pure helpers ----------------------------------------------------------------------


def response(location: str | None, url: str = "https://r.test/v2/x/blobs/uploads/") -> Response:
    headers = (("Location", location),) if location is not None else ()
    return Response(202, yarl.URL(url), headers)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/v2/x/blobs/uploads/u?_state=a%2Fb%3D", "https://r.test/v2/x/blobs/uploads/u?_state=a%2Fb%3D"),
        ("u?_state=a%2Fb", "https://r.test/v2/x/blobs/uploads/u?_state=a%2Fb"),
        ("https://s3.test/up?X-Sig=a%2Bb&x=1", "https://s3.test/up?X-Sig=a%2Bb&x=1"),
        ("//cdn.test/up?q=%2F", "https://cdn.test/up?q=%2F"),
    ],
)  # fmt: skip
def test_next_location_resolves_and_keeps_the_query(location: str, expected: str) -> None:
    assert str(next_location(response(location), "s")) == expected


@pytest.mark.parametrize("location", [None, "", "ftp://x/y"])
def test_next_location_refuses_nothing_or_non_http(location: str | None) -> None:
    with pytest.raises(ProtocolError):
        next_location(response(location), "blob upload r.test/x")


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("https://r.test/u?_state=a%2Fb%3D%3D", "https://r.test/u?_state=a%2Fb%3D%3D&digest=sha256%3A"),
        ("https://r.test/u", "https://r.test/u?digest=sha256%3A"),
        ("https://r.test/u?", "https://r.test/u?digest=sha256%3A"),
    ],
)  # fmt: skip
def test_with_digest_appends_to_the_query_as_it_is(location: str, expected: str) -> None:
    digest = sha256(b"")
    url = with_digest(yarl.URL(location, encoded=True), digest)
    assert str(url) == expected + digest[7:]


@pytest.mark.parametrize(
    ("host", "expected"),
    [("ghcr.io", 4 << 20), ("GHCR.IO", 4 << 20), ("myreg.azurecr.io", 4 << 20),
     ("public.ecr.aws", 4 << 20), ("quay.io", None), ("127.0.0.1:5000", None),
     ("ghcr.io:443", 4 << 20), ("[::1]:5000", None)],
)  # fmt: skip
def test_registries_known_to_need_chunks(host: str, expected: int | None) -> None:
    assert default_chunk_size(host) == expected


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        (['</v2/x/tags/list?n=2&last=b>; rel="next"'], "https://r.test/v2/x/tags/list?n=2&last=b"),
        (['<a?last=%2B>; rel=next'], "https://r.test/v2/x/tags/a?last=%2B"),
        (['<https://o.test/p>; rel="prev", </n>; rel="next"'], "https://r.test/n"),
        (['</p>; rel="prev"'], None),
        (["garbage"], None),
        ([], None),
    ],
)  # fmt: skip
def test_next_link(links: list[str], expected: str | None) -> None:
    resp = Response(
        200, yarl.URL("https://r.test/v2/x/tags/list"), tuple(("Link", v) for v in links)
    )
    found = _next_link(resp)
    assert (str(found) if found else None) == expected
