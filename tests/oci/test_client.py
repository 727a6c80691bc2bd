"""RegistryClient against the real registry, with images pushed by skopeo (not by our code)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from containerdisks.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobUnknownError,
    ContentTooLargeError,
    InvalidReferenceError,
    ManifestUnknownError,
    NotFoundError,
    PlatformNotFoundError,
    RegistryClient,
    RepositoryUnknownError,
)
from tests.oci.random_layout import Layout, write_random_layout
from tests.support.registry import Registry, start_registry


@dataclass
class Published:
    registry: Registry
    multi: Layout  # oci/multi:v1 (OCI index) and oci/multi-docker:v1 (Docker list)
    single: Layout  # oci/single:v1 (OCI manifest) and oci/single-docker:v1 (Docker v2s2)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    work = tmp_path_factory.mktemp("oci-client")
    with start_registry(work / "registry") as reg:
        multi = write_random_layout(work / "multi", "v1", ["amd64", "arm64"])
        single = write_random_layout(work / "single", "v1", ["amd64"], index=False)
        reg.push_layout(multi.root, "v1", "oci/multi", "v1", all_images=True)
        reg.push_layout(
            multi.root, "v1", "oci/multi-docker", "v1", all_images=True, docker_format=True
        )
        reg.push_layout(single.root, "v1", "oci/single", "v1")
        reg.push_layout(single.root, "v1", "oci/single-docker", "v1", docker_format=True)
        yield Published(reg, multi, single)


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


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
@pytest.mark.parametrize(
    ("repository", "child_type"),
    [("oci/multi", OCI_MANIFEST), ("oci/multi-docker", DOCKER_MANIFEST)],
)
async def test_resolve_platform_through_an_index(
    published: Published, repository: str, child_type: str, arch: str
) -> None:
    async with RegistryClient(published.registry.host) as client:
        resolved = await client.resolve_platform(repository, "v1", architecture=arch)
    assert resolved.top.is_index
    assert resolved.manifest.media_type == child_type
    assert str(resolved.platform) == f"linux/{arch}"
    # skopeo keeps config bytes when converting to Docker types: the config is ours, unchanged
    assert resolved.config_bytes == published.multi.configs[arch]
    assert resolved.config == json.loads(published.multi.configs[arch])
    assert resolved.image.config.digest == sha256(resolved.config_bytes)
    if child_type == OCI_MANIFEST:
        assert resolved.manifest.digest == published.multi.manifests[arch]
    raw_child = published.registry.inspect_raw(repository, resolved.manifest.digest)
    assert resolved.manifest.data == raw_child


@pytest.mark.parametrize(
    ("repository", "media_type"),
    [("oci/single", OCI_MANIFEST), ("oci/single-docker", DOCKER_MANIFEST)],
)
async def test_resolve_platform_of_a_single_manifest(
    published: Published, repository: str, media_type: str
) -> None:
    async with RegistryClient(published.registry.host) as client:
        resolved = await client.resolve_platform(repository, "v1", architecture="amd64")
        assert resolved.top is resolved.manifest
        assert resolved.manifest.media_type == media_type
        assert resolved.config_bytes == published.single.configs["amd64"]
        with pytest.raises(PlatformNotFoundError) as caught:
            await client.resolve_platform(repository, "v1", architecture="arm64")
    host = published.registry.host
    assert str(caught.value) == (
        f"image {host}/{repository}:v1: no manifest for platform linux/arm64 "
        "(available: linux/amd64)"
    )


async def test_unknown_repository_tag_and_arch_are_told_apart(published: Published) -> None:
    host = published.registry.host
    async with RegistryClient(host) as client:
        with pytest.raises(RepositoryUnknownError) as repo:
            await client.resolve_platform("oci/nothing", "v1", architecture="amd64")
        with pytest.raises(ManifestUnknownError) as tag:
            await client.resolve_platform("oci/multi", "v2", architecture="amd64")
        with pytest.raises(PlatformNotFoundError) as arch:
            await client.resolve_platform("oci/multi", "v1", architecture="s390x")
    assert str(repo.value) == (
        f"manifest {host}/oci/nothing:v1: HTTP 404 NAME_UNKNOWN: "
        "repository name not known to registry"
    )
    assert (
        str(tag.value)
        == f"manifest {host}/oci/multi:v2: HTTP 404 MANIFEST_UNKNOWN: manifest unknown"
    )
    assert str(arch.value) == (
        f"image {host}/oci/multi:v1: no manifest for platform linux/s390x "
        "(available: linux/amd64, linux/arm64)"
    )
    for caught in (repo, tag, arch):
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
