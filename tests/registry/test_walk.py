"""The index walker against the real registry, over images pushed by skopeo (not by our code)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from containerdisks import oci
from containerdisks.oci import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, RegistryClient
from containerdisks.oci.media import parse_image_manifest
from containerdisks.registry.walk import children, platform_manifest
from tests.oci.random_layout import Published, published_layouts


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    with published_layouts(tmp_path_factory.mktemp("walk")) as published:
        yield published


class Counting:
    """A store that records the references of the manifests read through it."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.read: list[str] = []

    @property
    def host(self) -> str:
        return self.client.host

    async def get_manifest(self, repository: str, reference: str) -> oci.Manifest:
        self.read.append(reference)
        return await self.client.get_manifest(repository, reference)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
@pytest.mark.parametrize(
    ("repository", "child_type"),
    [("oci/multi", OCI_MANIFEST), ("oci/multi-docker", DOCKER_MANIFEST)],
)
async def test_an_index_leads_to_the_manifest_of_the_platform(
    pushed: Published, repository: str, child_type: str, arch: str
) -> None:
    async with RegistryClient(pushed.registry.host) as client:
        top = await client.get_manifest(repository, "v1")
        manifest = await platform_manifest(client, repository, top, arch, repository)
        assert manifest is not None
        image = parse_image_manifest(manifest, repository)
        config = await client.get_blob(repository, image.config.digest, max_size=1 << 20)
    assert top.is_index
    assert manifest.media_type == child_type
    assert manifest.data == pushed.registry.inspect_raw(repository, manifest.digest)
    # skopeo keeps config bytes when converting to Docker types: the config is ours, unchanged
    assert config == pushed.multi.configs[arch]
    assert image.config.digest == sha256(config)
    if child_type == OCI_MANIFEST:
        assert manifest.digest == pushed.multi.manifests[arch]


async def test_a_platform_the_index_lacks_is_none(pushed: Published) -> None:
    async with RegistryClient(pushed.registry.host) as client:
        top = await client.get_manifest("oci/multi", "v1")
        assert await platform_manifest(client, "oci/multi", top, "s390x", "oci/multi") is None
        assert await platform_manifest(client, "oci/multi", top, "amd64", "x", os="windows") is None


async def test_a_single_manifest_stands_for_itself(pushed: Published) -> None:
    async with RegistryClient(pushed.registry.host) as client:
        top = await client.get_manifest("oci/single", "v1")
        for arch in ("amd64", "arm64"):  # its config is the caller's to check
            assert top is await platform_manifest(client, "oci/single", top, arch, "oci/single")
    assert top.media_type == OCI_MANIFEST
    assert top.data == pushed.registry.inspect_raw("oci/single", "v1")


async def test_only_the_first_entry_per_wanted_platform_is_read(pushed: Published) -> None:
    """An index with a windows entry and a second amd64 entry (pointing at arm64's manifest):
    only linux entries of the wanted arches are fetched, the first per arch, in index order."""
    amd64, arm64 = pushed.multi.manifests["amd64"], pushed.multi.manifests["arm64"]
    async with RegistryClient(pushed.registry.host) as client:
        entries = []
        for os_, arch, digest in [
            ("windows", "amd64", arm64),
            ("linux", "arm64", arm64),
            ("linux", "amd64", amd64),
            ("linux", "amd64", arm64),
        ]:
            size = (await client.get_manifest("oci/multi", digest)).size
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": size,
                    "platform": {"os": os_, "architecture": arch},
                }
            )
        data = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        ).encode()
        await client.put_manifest("oci/multi", "mixed", OCI_INDEX, data)
        top = await client.get_manifest("oci/multi", "mixed")

        store = Counting(client)
        walked = [
            (entry.platform, manifest.digest)
            async for entry, manifest in children(
                store,  # type: ignore[arg-type]  # only get_manifest is walked through
                "oci/multi",
                top,
                "oci/multi:mixed",
                architectures=("amd64", "arm64"),
            )
        ]
        assert [
            (oci.Platform("linux", "arm64"), arm64),
            (oci.Platform("linux", "amd64"), amd64),
        ] == walked
        assert [arm64, amd64] == store.read

        store.read.clear()
        everything = [m.digest async for _, m in children(store, "oci/multi", top, "x")]  # type: ignore[arg-type]
        assert [arm64, arm64, amd64, arm64] == everything == store.read
