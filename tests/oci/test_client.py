"""RegistryClient against the real registry, with images pushed by skopeo (not by our code)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from containerdisks.oci import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobUnknownError,
    ContentTooLargeError,
    InvalidReferenceError,
    ManifestUnknownError,
    NotFoundError,
    RegistryClient,
    RepositoryUnknownError,
)
from tests.oci.random_layout import Published, published_layouts, write_random_layout
from tests.support.registry import start_registry


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    with published_layouts(tmp_path_factory.mktemp("oci-client")) as pushed:
        yield pushed


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_get_manifest_returns_the_stored_bytes_of_an_oci_index(published: Published) -> None:
    async with RegistryClient(published.registry.host) as client:
        manifest = await client.get_manifest("oci/multi", "v1")
        assert client.scheme == "http"  # 127.0.0.1 refused TLS: fell back
    assert manifest.media_type == OCI_INDEX
    assert manifest.digest == published.multi.index_digest
    assert manifest.data == published.registry.inspect_raw("oci/multi", "v1")
    assert sha256(manifest.data) == manifest.digest


async def test_get_manifest_of_a_docker_manifest_list(published: Published) -> None:
    async with RegistryClient(published.registry.host) as client:
        manifest = await client.get_manifest("oci/multi-docker", "v1")
    assert manifest.media_type == DOCKER_MANIFEST_LIST
    assert manifest.data == published.registry.inspect_raw("oci/multi-docker", "v1")
    assert sha256(manifest.data) == manifest.digest


async def test_unknown_repository_and_tag_are_told_apart(published: Published) -> None:
    host = published.registry.host
    async with RegistryClient(host) as client:
        with pytest.raises(RepositoryUnknownError) as repo:
            await client.get_manifest("oci/nothing", "v1")
        with pytest.raises(ManifestUnknownError) as tag:
            await client.get_manifest("oci/multi", "v2")
    assert str(repo.value) == (
        f"manifest {host}/oci/nothing:v1: HTTP 404 NAME_UNKNOWN: "
        "repository name not known to registry"
    )
    assert (
        str(tag.value)
        == f"manifest {host}/oci/multi:v2: HTTP 404 MANIFEST_UNKNOWN: manifest unknown"
    )
    for caught in (repo, tag):
        assert isinstance(caught.value, NotFoundError)
        assert not getattr(caught.value, "temporary", False)


async def test_get_manifest_by_digest_and_head(published: Published) -> None:
    async with RegistryClient(published.registry.host) as client:
        top = await client.get_manifest("oci/multi-docker", "v1")
        again = await client.get_manifest("oci/multi-docker", top.digest)
        head = await client.head_manifest("oci/multi-docker", "v1")
        head_by_digest = await client.head_manifest("oci/multi-docker", top.digest)
        assert await client.head_manifest("oci/multi-docker", "nope") is None
        assert await client.head_manifest("oci/nothing", "v1") is None
    assert again == top
    assert head == top.descriptor()
    assert head_by_digest == top.descriptor()
    assert head is not None
    assert (head.media_type, head.size) == (DOCKER_MANIFEST_LIST, len(top.data))


async def test_get_blob(published: Published) -> None:
    config = published.multi.configs["amd64"]
    digest = sha256(config)
    async with RegistryClient(published.registry.host) as client:
        assert await client.get_blob("oci/multi", digest, max_size=len(config)) == config
        with pytest.raises(ContentTooLargeError):
            await client.get_blob("oci/multi", digest, max_size=len(config) - 1)
        with pytest.raises(BlobUnknownError) as unknown:
            await client.get_blob("oci/multi", "sha256:" + "0" * 64, max_size=100)
    assert "BLOB_UNKNOWN" in str(unknown.value)


async def test_manifest_larger_than_allowed(published: Published) -> None:
    async with RegistryClient(published.registry.host, max_manifest_size=64) as client:
        with pytest.raises(ContentTooLargeError, match="more than the 64 allowed"):
            await client.get_manifest("oci/multi", "v1")


async def test_bad_names_fail_before_any_request(published: Published) -> None:
    async with RegistryClient(published.registry.host) as client:
        with pytest.raises(InvalidReferenceError):
            await client.get_manifest("oci/Multi", "v1")
        with pytest.raises(InvalidReferenceError):
            await client.get_manifest("oci/multi", "sha256:abc")
        with pytest.raises(InvalidReferenceError):
            await client.get_blob("oci/multi", "v1", max_size=1)
        assert client.scheme is None
    with pytest.raises(InvalidReferenceError, match="expected a registry host"):
        RegistryClient("quay.io/containerdisks")


def test_skopeo_without_all_pushes_only_the_host_platform(tmp_path: Path) -> None:
    """Documents skopeo 1.9.3's behaviour that tests/support/registry.py describes."""
    layout = write_random_layout(tmp_path / "layout", "v1", ["amd64", "arm64"])
    with start_registry(tmp_path / "registry") as reg:
        reg.push_layout(layout.root, "v1", "x/y", "v1")
        pushed = json.loads(reg.inspect_raw("x/y", "v1"))
        assert pushed["mediaType"] == OCI_MANIFEST
        with pytest.raises(RuntimeError, match="preserve digests"):
            reg.push_layout(
                layout.root, "v1", "x/z", "v1",
                all_images=True, docker_format=True, preserve_digests=True,
            )  # fmt: skip


def test_client_names_its_registry() -> None:
    hub = RegistryClient("docker.io")
    assert (hub.host, hub.api_host, hub.scheme) == ("docker.io", "registry-1.docker.io", None)
    assert (
        repr(RegistryClient("127.0.0.1:5000")) == "<RegistryClient 127.0.0.1:5000 scheme=undecided>"
    )
