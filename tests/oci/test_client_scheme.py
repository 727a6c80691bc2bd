"""The scheme rule, for real: HTTPS first, plain HTTP only where allowed, never after a bad cert."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from containerdisks.oci import CertificateError, RegistryClient, TLSError
from tests.oci.random_layout import read_config, write_random_layout
from tests.support.registry import Registry


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1: a non-local name that still reaches the test registry."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@pytest.fixture
async def resolving_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=LoopbackResolver())
    ) as session:
        yield session


def publish(reg: Registry, tmp_path: Path) -> None:
    layout = write_random_layout(tmp_path / "layout", "v1", ["amd64"], index=False)
    reg.push_layout(layout.root, "v1", "tls/image", "v1")


async def test_plain_http_registry_on_loopback_falls_back_to_http(registry: Registry) -> None:
    async with RegistryClient(registry.host) as client:
        assert await client.head_manifest("x/y", "v1") is None
        assert client.scheme == "http"


async def test_plain_http_registry_under_a_public_name_does_not_fall_back(
    registry: Registry, resolving_session: aiohttp.ClientSession
) -> None:
    port = registry.host.rsplit(":", 1)[1]
    host = f"registry.example:{port}"
    async with RegistryClient(host, session=resolving_session) as client:
        with pytest.raises(TLSError) as caught:
            await client.head_manifest("x/y", "v1")
        assert client.scheme is None
    assert str(caught.value) == (
        f"GET https://{host}/v2/: TLS handshake failed: WRONG_VERSION_NUMBER"
    )
    assert not isinstance(caught.value, CertificateError)
    # insecure_skip_tls allows the fallback for any host (containers/image's meaning)
    async with RegistryClient(host, session=resolving_session, insecure_skip_tls=True) as client:
        assert await client.head_manifest("x/y", "v1") is None
        assert client.scheme == "http"
    assert not resolving_session.closed  # a session passed in is the caller's to close


async def test_tls_registry_with_its_ca_file(tls_registry: Registry, tmp_path: Path) -> None:
    publish(tls_registry, tmp_path)
    async with RegistryClient(tls_registry.host, ca_file=tls_registry.ca_file) as client:
        config = await read_config(client, "tls/image", "v1", "amd64")
        assert client.scheme == "https"
    assert config["architecture"] == "amd64"


async def test_tls_registry_without_its_ca_fails_and_never_falls_back(
    tls_registry: Registry,
) -> None:
    async with RegistryClient(tls_registry.host) as client:
        with pytest.raises(CertificateError) as caught:
            await client.head_manifest("tls/image", "v1")
        assert client.scheme is None
    error = caught.value
    assert str(error).startswith(
        f"GET https://{tls_registry.host}/v2/: TLS certificate verification failed: "
    )
    assert "\n" not in str(error)
    assert not error.temporary
    # Had the client tried plain HTTP, the server's "400 Client sent an HTTP request to an
    # HTTPS server" would have been an answer: the ping would have succeeded with scheme http.


async def test_insecure_skip_tls_keeps_https_when_it_works(tls_registry: Registry) -> None:
    async with RegistryClient(tls_registry.host, insecure_skip_tls=True) as client:
        assert await client.head_manifest("tls/image", "v1") is None
        assert client.scheme == "https"


async def test_tls_registry_by_name_localhost(tls_registry: Registry) -> None:
    port = tls_registry.host.rsplit(":", 1)[1]
    async with RegistryClient(f"localhost:{port}", ca_file=tls_registry.ca_file) as client:
        assert await client.head_manifest("tls/image", "v1") is None
        assert client.scheme == "https"


def test_a_missing_ca_file_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RegistryClient("127.0.0.1:5000", ca_file=tmp_path / "nope.crt")
