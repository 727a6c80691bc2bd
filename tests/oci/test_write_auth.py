"""Writes with real auth and TLS: htpasswd Basic, token auth with the test token server, a
self-signed CA. Every secret involved is checked against all output (tests/oci/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from containerdisks.oci import (
    OCI_MANIFEST,
    CertificateError,
    DeniedError,
    RegistryClient,
    UnauthorizedError,
)
from tests.oci.conftest import Traced
from tests.support.registry import PASSWORD, USERNAME, Registry, start_registry

REPO = "auth/write"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 32 * 1024):
        yield data[start : start + 32 * 1024]


async def push_small_image(client: RegistryClient, repository: str, tag: str) -> str:
    """A layer by upload session, a config by put_blob, a manifest by tag: every write."""
    layer = os.urandom(100_000)
    async with client.blob_upload(repository) as upload:
        await upload.write(chunks(layer))
        await upload.commit(sha256(layer))
    config = await client.put_blob(repository, b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.digest,
                "size": config.size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return await client.put_manifest(repository, tag, OCI_MANIFEST, manifest)


async def test_basic_auth_push_and_a_wrong_password(basic_registry: Registry) -> None:
    reg = basic_registry
    async with RegistryClient(reg.host, credentials=(USERNAME, PASSWORD)) as client:
        digest = await push_small_image(client, REPO, "v1")
    assert sha256(reg.inspect_raw(REPO, "v1")) == digest

    wrong = "wrong-" + PASSWORD
    async with RegistryClient(reg.host, credentials=(USERNAME, wrong)) as client:
        with pytest.raises(UnauthorizedError) as caught:
            await push_small_image(client, REPO, "v2")
    message = str(caught.value)
    assert message == (
        f"blob upload {reg.host}/{REPO}: HTTP 401 UNAUTHORIZED: authentication required"
    )
    assert not caught.value.temporary
    assert wrong not in message
    assert PASSWORD not in message
    assert reg.list_tags(REPO) == ["v1"]


async def test_token_auth_anonymous_may_pull_but_not_push(
    token_registry: Registry, secrets: set[str]
) -> None:
    reg = token_registry
    server = reg.token_server
    assert server is not None
    async with RegistryClient(reg.host) as client:
        assert not await client.has_blob(REPO, sha256(b"x"))  # pull is allowed
        with pytest.raises(DeniedError) as caught:
            await push_small_image(client, REPO, "v1")
    secrets.update(server.issued_tokens())
    assert str(caught.value) == (
        f"blob upload {reg.host}/{REPO}: HTTP 401 UNAUTHORIZED: authentication required; "
        f"token service granted anonymous less than repository:{REPO}:pull,push"
    )
    assert not caught.value.temporary
    # one pull token, one push token asked for (granted pull only); no retry after the refusal
    assert [(r.user, r.scopes) for r in server.requests] == [
        (None, (f"repository:{REPO}:pull",)),
        (None, (f"repository:{REPO}:pull,push",)),
    ]


async def test_token_auth_push_with_mount_scopes_and_token_reuse(
    token_registry: Registry, secrets: set[str], traced: Traced
) -> None:
    reg = token_registry
    server = reg.token_server
    assert server is not None
    async with RegistryClient(
        reg.host, credentials=(USERNAME, PASSWORD), session=traced.session
    ) as client:
        digest = await push_small_image(client, REPO, "v1")
        await push_small_image(client, REPO, "v2")
        layer = json.loads((await client.get_manifest(REPO, "v1")).data)["layers"][0]["digest"]
        assert await client.mount_blob("auth/other", layer, REPO)
        assert await client.has_blob("auth/other", layer)  # the mount token covers it
        assert sorted(await client.list_tags(REPO)) == ["v1", "v2"]
    secrets.update(server.issued_tokens())
    assert [(r.user, r.scopes, r.status) for r in server.requests] == [
        (USERNAME, (f"repository:{REPO}:pull,push",), 200),
        (USERNAME, ("repository:auth/other:pull,push", f"repository:{REPO}:pull"), 200),
    ]
    assert sha256(reg.inspect_raw(REPO, "v1")) == digest
    # every registry request but the ping carried a token; nothing was sent twice after a 401
    statuses = [status for _, path, status in traced.log.entries if path.startswith("/v2/")]
    assert statuses.count(401) == 1  # the ping


async def test_token_service_refuses_a_wrong_password(token_registry: Registry) -> None:
    wrong = "not-the-password-7"
    async with RegistryClient(token_registry.host, credentials=(USERNAME, wrong)) as client:
        with pytest.raises(UnauthorizedError) as caught:
            await push_small_image(client, REPO, "v1")
    assert str(caught.value) == (
        f"token for {token_registry.host} from 127.0.0.1 (repository:{REPO}:pull,push): "
        "HTTP 401 UNAUTHORIZED: invalid credentials"
    )


@pytest.fixture(scope="module")
def tls_basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("tls-basic"), tls=True, auth="basic") as reg:
        yield reg


async def test_tls_push_with_the_ca_file(tls_basic_registry: Registry) -> None:
    reg = tls_basic_registry
    async with RegistryClient(
        reg.host, credentials=(USERNAME, PASSWORD), ca_file=reg.ca_file
    ) as client:
        digest = await push_small_image(client, "tls/write", "v1")
        assert client.scheme == "https"
    assert sha256(reg.inspect_raw("tls/write", "v1")) == digest


async def test_tls_push_without_the_ca_is_refused_and_never_tries_http(
    tls_basic_registry: Registry, traced: Traced
) -> None:
    reg = tls_basic_registry
    async with RegistryClient(
        reg.host, credentials=(USERNAME, PASSWORD), session=traced.session
    ) as client:
        with pytest.raises(CertificateError) as caught:
            await push_small_image(client, "tls/refused", "v1")
        assert client.scheme is None
    assert str(caught.value).startswith(
        f"GET https://{reg.host}/v2/: TLS certificate verification failed: "
    )
    assert traced.log.entries == [("GET", "/v2/", 0)]  # one HTTPS attempt, no plain HTTP


async def test_insecure_skip_tls_pushes_over_https(tls_basic_registry: Registry) -> None:
    reg = tls_basic_registry
    async with RegistryClient(
        reg.host, credentials=(USERNAME, PASSWORD), insecure_skip_tls=True
    ) as client:
        await push_small_image(client, "tls/insecure", "v1")
        assert client.scheme == "https"
