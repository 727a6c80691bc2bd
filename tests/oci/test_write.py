"""The write side against the real registry; skopeo (not our code) reads back what we pushed.

The images are random OCI layouts written by tests/oci/random_layout.py (tarfile, gzip, json:
not the code under test). Our client pushes them blob by blob, manifests by digest, the index by
tag; ``skopeo copy --all --preserve-digests`` then copies them out of the registry, and every
blob and manifest must come back with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from containerdisks.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    DigestMismatchError,
    InvalidManifestError,
    RegistryClient,
    RegistryError,
    RepositoryUnknownError,
)
from tests.oci.conftest import Traced
from tests.oci.random_layout import Layout, write_random_layout
from tests.support.registry import Registry

CHUNK = 64 * 1024


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


async def file_chunks(path: Path, size: int = CHUNK) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


async def from_bytes(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def index_of(layout: Layout) -> tuple[bytes, dict[str, object]]:
    assert layout.index_digest is not None
    data = blob_path(layout.root, layout.index_digest).read_bytes()
    return data, json.loads(data)


async def push_image(
    client: RegistryClient, root: Path, repository: str, tag: str, index: bytes
) -> str:
    """Push the index ``index`` of the layout at ``root`` and all it references, in push order:
    layers (streamed), configs (one PUT), manifests by digest, then the index by tag."""
    doc = json.loads(index)
    for entry in doc["manifests"]:
        manifest = blob_path(root, entry["digest"]).read_bytes()
        image = json.loads(manifest)
        for layer in image["layers"]:
            if await client.has_blob(repository, layer["digest"]):
                continue
            async with client.blob_upload(repository) as upload:
                await upload.write(file_chunks(blob_path(root, layer["digest"])))
                described = await upload.commit(layer["digest"])
            assert (described.digest, described.size) == (layer["digest"], layer["size"])
        config = blob_path(root, image["config"]["digest"]).read_bytes()
        stored = await client.put_blob(repository, config, media_type=image["config"]["mediaType"])
        assert stored.digest == image["config"]["digest"]
        pushed = await client.put_manifest(
            repository, entry["digest"], entry["mediaType"], manifest
        )
        assert pushed == entry["digest"]
    return await client.put_manifest(repository, tag, doc["mediaType"], index)


def as_docker(layout: Layout) -> bytes:
    """The layout's images as Docker schema 2 manifests and a manifest list, written into the
    layout's blob directory; returns the list's bytes."""
    _, index = index_of(layout)
    entries = []
    for entry in index["manifests"]:  # type: ignore[attr-defined]
        image = json.loads(blob_path(layout.root, entry["digest"]).read_bytes())
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {**image["config"], "mediaType": DOCKER_CONFIG},
                "layers": [{**layer, "mediaType": DOCKER_LAYER_GZIP} for layer in image["layers"]],
            },
            indent=3,
        ).encode()
        blob_path(layout.root, sha256(manifest)).write_bytes(manifest)
        entries.append(
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": sha256(manifest),
                "size": len(manifest),
                "platform": entry["platform"],
            }
        )
    data = json.dumps(
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": entries}
    ).encode()
    blob_path(layout.root, sha256(data)).write_bytes(data)
    return data


def blobs_of(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "blobs" / "sha256").iterdir()}


@pytest.mark.parametrize("chunk_size", [None, 100_000], ids=["one-streamed-patch", "chunks"])
async def test_push_multi_arch_oci_image_and_skopeo_reads_it_back_byte_exact(
    session_registry: Registry, tmp_path: Path, traced: Traced, chunk_size: int | None
) -> None:
    reg = session_registry
    repository = f"write/oci-{'stream' if chunk_size is None else 'chunks'}"
    layout = write_random_layout(
        tmp_path / "layout", "v1", ["amd64", "arm64"], payload_size=300_000, layers=2
    )
    index, _ = index_of(layout)
    async with RegistryClient(reg.host, chunk_size=chunk_size, session=traced.session) as client:
        digest = await push_image(client, layout.root, repository, "v1", index)
        assert digest == layout.index_digest
        assert await client.list_tags(repository) == ["v1"]
    patches = traced.log.count("PATCH")
    if chunk_size is None:
        assert patches == 4  # one per layer
    else:
        layer_sizes = [p.stat().st_size for p in (layout.root / "blobs" / "sha256").iterdir()]
        assert patches == sum(-(-size // chunk_size) for size in layer_sizes if size > 300_000)
        assert traced.log.headers[traced.log.methods().index("PATCH")]["Content-Range"] == (
            f"0-{chunk_size - 1}"
        )

    pulled = tmp_path / "pulled"
    reg.pull(repository, "v1", f"oci:{pulled}:v1")  # --all --preserve-digests
    copied = json.loads((pulled / "index.json").read_bytes())
    assert [m["digest"] for m in copied["manifests"]] == [layout.index_digest]
    assert blobs_of(pulled) == blobs_of(layout.root)
    assert reg.inspect_raw(repository, "v1") == index
    assert reg.list_tags(repository) == ["v1"]


async def test_push_docker_manifest_list_and_skopeo_reads_it_back_byte_exact(
    session_registry: Registry, tmp_path: Path
) -> None:
    reg = session_registry
    layout = write_random_layout(tmp_path / "layout", "v1", ["amd64", "arm64"])
    manifest_list = as_docker(layout)
    async with RegistryClient(reg.host) as client:
        digest = await push_image(client, layout.root, "write/docker", "v1", manifest_list)
        assert digest == sha256(manifest_list)
        head = await client.head_manifest("write/docker", "v1")
        assert head is not None
        assert (head.media_type, head.digest) == (DOCKER_MANIFEST_LIST, digest)

    pulled = tmp_path / "pulled"
    reg.pull("write/docker", "v1", f"dir:{pulled}")
    assert (pulled / "manifest.json").read_bytes() == manifest_list
    for entry in json.loads(manifest_list)["manifests"]:
        child = pulled / f"{entry['digest'].removeprefix('sha256:')}.manifest.json"
        assert child.read_bytes() == blob_path(layout.root, entry["digest"]).read_bytes()
        image = json.loads(child.read_bytes())
        for blob in [image["config"], *image["layers"]]:
            name = blob["digest"].removeprefix("sha256:")
            assert (pulled / name).read_bytes() == blob_path(
                layout.root, blob["digest"]
            ).read_bytes()


async def test_a_second_push_only_heads_the_blobs(
    session_registry: Registry, tmp_path: Path, traced: Traced
) -> None:
    layout = write_random_layout(tmp_path / "layout", "v1", ["amd64", "arm64"], layers=2)
    index, _ = index_of(layout)
    async with RegistryClient(session_registry.host, session=traced.session) as client:
        await push_image(client, layout.root, "write/again", "v1", index)
        first = traced.log.methods()
        traced.log.clear()
        await push_image(client, layout.root, "write/again", "v2", index)
        second = traced.log.methods()
    # first push: ping, per arch 2 layers x (HEAD, POST, PATCH, PUT) + config (HEAD, POST, PUT)
    # + manifest PUT, then the index PUT
    assert first.count("POST") == 6
    assert first.count("PATCH") == 4
    # again: 4 layer HEADs and 2 config HEADs answer 200; only the manifests are PUT again
    assert sorted(second) == sorted(["HEAD"] * 6 + ["PUT"] * 3)
    assert traced.log.count("HEAD", "/blobs/") == 6
    assert sorted(session_registry.list_tags("write/again")) == ["v1", "v2"]


async def test_cross_repository_mount(session_registry: Registry, traced: Traced) -> None:
    data = os.urandom(200_000)
    digest = sha256(data)
    async with RegistryClient(session_registry.host, session=traced.session) as client:
        async with client.blob_upload("mount/source") as upload:
            await upload.write(from_bytes(data))
            await upload.commit(digest)
        assert not await client.has_blob("mount/target", digest)
        traced.log.clear()
        assert await client.mount_blob("mount/target", digest, "mount/source")
        assert traced.log.entries == [("POST", "/v2/mount/target/blobs/uploads/", 201)]
        assert await client.has_blob("mount/target", digest)

        # a blob the source does not have: distribution opens an upload (202) instead, which
        # is cancelled at once, and the answer is False (the caller uploads)
        traced.log.clear()
        missing = sha256(b"not there")
        assert not await client.mount_blob("mount/target", missing, "mount/source")
        assert [(m, s) for m, _, s in traced.log.entries] == [("POST", 202), ("DELETE", 204)]
        assert session_registry.upload_dirs("mount/target") == []
        # an unknown source repository is no error either
        assert not await client.mount_blob("mount/target", digest, "mount/nothing-here")


async def test_put_blob_skips_what_is_there(session_registry: Registry, traced: Traced) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": os.urandom(8).hex()})
    data = config.encode()
    async with RegistryClient(session_registry.host, session=traced.session) as client:
        first = await client.put_blob("write/config", data, media_type="x/y")
        assert traced.log.methods()[-3:] == ["HEAD", "POST", "PUT"]
        traced.log.clear()
        again = await client.put_blob("write/config", data)
        assert traced.log.methods() == ["HEAD"]
        assert await client.get_blob("write/config", first.digest, max_size=len(data)) == data
    assert (first.media_type, first.digest, first.size) == ("x/y", sha256(data), len(data))
    assert again.digest == first.digest


async def test_upload_left_without_commit_is_cancelled(
    session_registry: Registry, traced: Traced
) -> None:
    reg = session_registry
    data = os.urandom(150_000)
    async with RegistryClient(reg.host, session=traced.session) as client:
        seen: list[tuple[int, int, str, int]] = []

        async def abandon() -> None:
            async with client.blob_upload("cancel/one") as upload:
                await upload.write(from_bytes(data))
                live = len(reg.upload_dirs("cancel/one"))  # the registry holds the bytes
                seen.append((upload.sent, upload.size, upload.digest, live))
                raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError, match="changed my mind"):
            await abandon()
        assert seen == [(len(data), len(data), sha256(data), 1)]
        assert traced.log.methods()[-1] == "DELETE"
        assert reg.upload_dirs("cancel/one") == []

        async with client.blob_upload("cancel/one") as upload:  # no exception, no commit
            await upload.write(from_bytes(data))
        assert traced.log.methods()[-1] == "DELETE"
        assert reg.upload_dirs("cancel/one") == []
        assert not await client.has_blob("cancel/one", sha256(data))
        with pytest.raises(RepositoryUnknownError):
            await client.list_tags("cancel/one")


async def test_commit_with_another_digest_fails_before_the_put(
    session_registry: Registry, traced: Traced
) -> None:
    data = os.urandom(10_000)
    wrong = sha256(b"something else")
    async with RegistryClient(session_registry.host, session=traced.session) as client:

        async def commit_wrong() -> None:
            async with client.blob_upload("write/mismatch") as upload:
                await upload.write(from_bytes(data))
                await upload.commit(wrong)

        with pytest.raises(DigestMismatchError) as caught:
            await commit_wrong()
        assert "PUT" not in traced.log.methods()
        assert traced.log.methods()[-1] == "DELETE"
        assert not await client.has_blob("write/mismatch", wrong)
    assert str(caught.value) == (
        f"blob upload {session_registry.host}/write/mismatch: digest mismatch: "
        f"expected {wrong}, got {sha256(data)}"
    )
    assert session_registry.upload_dirs("write/mismatch") == []


async def test_the_sources_own_error_propagates_and_cancels(
    session_registry: Registry, traced: Traced
) -> None:
    class SourceBrokeError(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield os.urandom(300_000)
        raise SourceBrokeError("decompression failed")

    async with RegistryClient(session_registry.host, session=traced.session) as client:
        for chunk_size in (None, 100_000):
            client._chunk_size = chunk_size
            with pytest.raises(SourceBrokeError):
                async with client.blob_upload("write/broken") as upload:
                    await upload.write(failing())
            assert traced.log.methods()[-1] == "DELETE"
            assert session_registry.upload_dirs("write/broken") == []
            with pytest.raises(RuntimeError, match="not open"):
                await upload.commit()


async def test_streamed_write_with_a_known_size(session_registry: Registry, traced: Traced) -> None:
    data = os.urandom(100_000)
    async with RegistryClient(session_registry.host, session=traced.session) as client:
        async with client.blob_upload("write/sized") as upload:
            await upload.write(from_bytes(data[:60_000]), size=60_000)
            await upload.write(from_bytes(data[60_000:]), size=40_000)  # a second PATCH
            described = await upload.commit()
        assert described.digest == sha256(data)
        patches = [
            h for h, m in zip(traced.log.headers, traced.log.methods(), strict=True) if m == "PATCH"
        ]
        assert [h.get("Content-Length") for h in patches] == ["60000", "40000"]
        assert all("Transfer-Encoding" not in h for h in patches)
        assert await client.get_blob("write/sized", described.digest, max_size=len(data)) == data

        with pytest.raises(ValueError, match="not the 50000 announced"):
            async with client.blob_upload("write/sized") as upload:
                await upload.write(from_bytes(data[:40_000]), size=50_000)
        assert traced.log.methods()[-1] == "DELETE"


async def test_put_manifest_checks(session_registry: Registry) -> None:
    host = session_registry.host
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": sha256(b"nope"), "size": 4},
            "layers": [],
        }
    ).encode()
    async with RegistryClient(host) as client:
        other = sha256(b"other")
        with pytest.raises(DigestMismatchError):
            await client.put_manifest("write/manifest", other, OCI_MANIFEST, manifest)
        assert client.scheme is None  # refused before any request
        with pytest.raises(InvalidManifestError, match="mediaType"):
            await client.put_manifest("write/manifest", "v1", OCI_INDEX, manifest)
        with pytest.raises(RegistryError) as caught:
            await client.put_manifest("write/manifest", "v1", OCI_MANIFEST, manifest)
    error = caught.value
    assert (error.status, error.code, error.temporary) == (400, "MANIFEST_BLOB_UNKNOWN", False)
    assert str(error).startswith(
        f"manifest {host}/write/manifest:v1: HTTP 400 MANIFEST_BLOB_UNKNOWN"
    )


async def test_read_blob_streams_a_big_blob_and_catches_rot_past_the_first_hash_batch(
    session_registry: Registry,
) -> None:
    # Bigger than two of read_blob's hash batches and not a multiple of any read size, so the
    # hash sees every chunk once and in order, and the tail batch is hashed too.
    data = os.urandom((21 << 20) + 123)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with RegistryClient(session_registry.host) as client:
        async with client.blob_upload("read/big") as upload:
            await upload.write(from_bytes(data, 1 << 20))
            assert (await upload.commit(digest)).size == len(data)
        got: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            got.append(chunk)

        assert await client.read_blob("read/big", digest, sink, size=len(data)) == len(data)
        assert b"".join(got) == data
        # Bit rot in the registry's storage, 17 MiB in (the third batch): the registry serves
        # the bytes as they are, and the read must refuse them after the sink saw them all.
        stored = session_registry.data_dir / (
            f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
        )
        rotten = bytearray(stored.read_bytes())
        rotten[17 << 20] ^= 0xFF
        stored.write_bytes(bytes(rotten))
        got.clear()
        with pytest.raises(DigestMismatchError):
            await client.read_blob("read/big", digest, sink, size=len(data))
        assert sum(map(len, got)) == len(data)


@pytest.mark.parametrize("chunk_size", [None, 128 * 1024])
async def test_a_write_with_a_checked_digest_is_verified_by_the_registry(
    session_registry: Registry, chunk_size: int | None
) -> None:
    """`write(digest=)` skips our hash (the producer checks the bytes, as a copy does); the
    registry still refuses bytes that are not that digest, and takes those that are."""
    data = os.urandom(300_000)
    other = os.urandom(300_000)
    repository = f"write/checked-{chunk_size or 0}"
    async with RegistryClient(session_registry.host, chunk_size=chunk_size) as client:
        async with client.blob_upload(repository) as upload:
            await upload.write(from_bytes(data), size=len(data), digest=sha256(data))
            assert upload.digest == sha256(data)
            with pytest.raises(DigestMismatchError):
                await upload.commit(sha256(other))  # only the digest the write was given
            assert not upload.committed
        async with client.blob_upload(repository) as upload:
            await upload.write(from_bytes(other), size=len(other), digest=sha256(data))
            with pytest.raises(RegistryError) as refused:
                await upload.commit(sha256(data))
        assert refused.value.code == "DIGEST_INVALID"
        assert not await client.has_blob(repository, sha256(data))
        async with client.blob_upload(repository) as upload:
            await upload.write(from_bytes(data), size=len(data), digest=sha256(data))
            await upload.commit(sha256(data))
        assert await client.has_blob(repository, sha256(data))
