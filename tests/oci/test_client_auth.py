"""Basic and Bearer-token auth against the real registry and a real token server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from containerdisks.oci import RegistryClient, RepositoryUnknownError, UnauthorizedError
from tests.oci.random_layout import read_config, write_random_layout
from tests.support.registry import Registry

REPO = "auth/image"
SCOPE = f"repository:{REPO}:pull"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def publish(reg: Registry, tmp_path: Path) -> None:
    layout = write_random_layout(tmp_path / "layout", "v1", ["amd64", "arm64"])
    reg.push_layout(layout.root, "v1", REPO, "v1", all_images=True, docker_format=True)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="containerdisks.oci")
    return caplog


async def test_basic_auth(
    basic_registry: Registry, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    publish(basic_registry, tmp_path)
    assert basic_registry.credentials is not None
    user, password = basic_registry.credentials
    async with RegistryClient(basic_registry.host, credentials=(user, password)) as client:
        config = await read_config(client, REPO, "v1", "arm64")
    assert config["architecture"] == "arm64"

    errors: list[Exception] = []
    for credentials in (None, (user, "wrong-" + password)):
        async with RegistryClient(basic_registry.host, credentials=credentials) as client:
            with pytest.raises(UnauthorizedError) as caught:
                await client.get_manifest(REPO, "v1")
            errors.append(caught.value)
    host = basic_registry.host
    assert str(errors[0]) == (
        f"manifest {host}/{REPO}:v1: HTTP 401 UNAUTHORIZED: authentication required"
    )
    for error in errors:
        assert isinstance(error, UnauthorizedError)
        assert not error.temporary
        assert password not in str(error)
    assert password not in logs.text
    assert "Basic " not in logs.text


async def test_bearer_token_is_requested_with_the_pull_scope_and_reused(
    token_registry: Registry, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    publish(token_registry, tmp_path)
    server = token_registry.token_server
    assert server is not None
    before = server.count()
    async with RegistryClient(token_registry.host) as client:  # anonymous: pull is allowed
        for arch in ("amd64", "arm64"):
            await read_config(client, REPO, "v1", arch)  # 3 GETs each
        assert await client.head_manifest(REPO, "v1") is not None
    issued = server.requests[before:]
    assert [(r.user, r.scopes, r.status) for r in issued] == [(None, (SCOPE,), 200)]
    assert issued[0].service == "test-registry"
    for token in server.issued_tokens():
        assert token not in logs.text


async def test_concurrent_requests_share_one_token_fetch(
    token_registry: Registry, tmp_path: Path
) -> None:
    publish(token_registry, tmp_path)
    server = token_registry.token_server
    assert server is not None
    before = server.count()
    async with RegistryClient(token_registry.host) as client:
        manifests = await asyncio.gather(*(client.get_manifest(REPO, "v1") for _ in range(8)))
    assert len({m.digest for m in manifests}) == 1
    assert server.count() - before == 1


async def test_bearer_token_with_credentials_and_refresh_after_expiry(
    token_registry: Registry, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    publish(token_registry, tmp_path)
    server = token_registry.token_server
    assert server is not None
    assert token_registry.credentials is not None
    user, password = token_registry.credentials
    clock = Clock()
    before = server.count()
    async with RegistryClient(token_registry.host, credentials=(user, password), clock=clock) as c:
        await c.get_manifest(REPO, "v1")
        await c.get_manifest(REPO, "v1")
        assert server.count() - before == 1
        clock.now += server.expires_in or 60  # the server said 300 s: now it is stale
        await c.get_manifest(REPO, "v1")
        assert server.count() - before == 2
    assert {r.user for r in server.requests[before:]} == {user}
    for token in server.issued_tokens():
        assert token not in logs.text
    assert password not in logs.text


async def test_wrong_password_at_the_token_service(
    token_registry: Registry, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    publish(token_registry, tmp_path)
    server = token_registry.token_server
    assert server is not None
    secret = "not-the-password-42"
    async with RegistryClient(token_registry.host, credentials=("testuser", secret)) as client:
        with pytest.raises(UnauthorizedError) as caught:
            await client.get_manifest(REPO, "v1")
    message = str(caught.value)
    assert message == (
        f"token for {token_registry.host} from 127.0.0.1 ({SCOPE}): "
        "HTTP 401 UNAUTHORIZED: invalid credentials"
    )
    assert secret not in message
    assert secret not in logs.text
    assert server.requests[-1].status == 401


async def test_unknown_repository_behind_token_auth_costs_one_token(
    token_registry: Registry,
) -> None:
    server = token_registry.token_server
    assert server is not None
    async with RegistryClient(token_registry.host) as client:
        with pytest.raises(RepositoryUnknownError):
            await client.get_manifest("auth/missing", "v1")
    # the manifest GET and the tags/list probe share one pull token
    assert server.count("repository:auth/missing:pull") == 1
