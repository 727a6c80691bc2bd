"""LayoutStore: OCI layouts per repository, read back by skopeo (not by our code)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from containerdisks.oci import DigestMismatchError, ManifestUnknownError, RepositoryUnknownError
from containerdisks.oci.digest import compute_digest
from containerdisks.oci.layout import LayoutStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


async def push_image(store: LayoutStore, repo: str, arch: str, payload: bytes) -> dict[str, object]:
    async with store.blob_upload(repo) as up:
        await up.write(chunks(payload))
        layer = await up.commit(compute_digest(payload))
    config = canonical(
        {
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }
    )
    cfg = await store.put_blob(repo, config)
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cfg.digest,
                "size": cfg.size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.digest,
                    "size": layer.size,
                }
            ],
        }
    )
    digest = await store.put_manifest(repo, compute_digest(manifest), OCI_MANIFEST, manifest)
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(manifest),
        "platform": {"architecture": arch, "os": "linux"},
    }


def skopeo_inspect(ref: str) -> dict[str, object]:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", ref], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


async def test_written_layout_is_read_by_skopeo_and_by_us(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)
    children = [
        await push_image(store, "fedora", a, os.urandom(10_000)) for a in ("amd64", "arm64")
    ]
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    digest = await store.put_manifest("fedora", "40", OCI_INDEX, index)

    assert json.loads(index) == skopeo_inspect(f"oci:{tmp_path}/fedora:40")
    got = await store.get_manifest("fedora", "40")
    assert (OCI_INDEX, index, digest) == (got.media_type, got.data, got.digest)
    head = await store.head_manifest("fedora", "40")
    assert head is not None
    assert digest == head.digest
    assert ["40"] == await store.list_tags("fedora")
    # skopeo copies the whole multi-arch image out of the layout: every blob is in place.
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--all",
            "--quiet",
            f"oci:{tmp_path}/fedora:40",
            f"oci:{tmp_path}/copy:40",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_retag_replaces_the_old_ref(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)
    first = await push_image(store, "x", "amd64", b"one")
    second = await push_image(store, "x", "amd64", b"two")
    for desc in (first, second):
        data = (tmp_path / "x/blobs/sha256" / str(desc["digest"]).split(":")[1]).read_bytes()
        await store.put_manifest("x", "latest", OCI_MANIFEST, data)
    index = json.loads((tmp_path / "x/index.json").read_text())
    assert [second["digest"]] == [m["digest"] for m in index["manifests"]]


async def test_unknown_repository_and_tag_are_told_apart(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)
    with pytest.raises(RepositoryUnknownError):
        await store.get_manifest("nothing", "1")
    await push_image(store, "x", "amd64", b"data")
    with pytest.raises(ManifestUnknownError):
        await store.get_manifest("x", "1")
    assert await store.head_manifest("x", "1") is None


async def test_an_upload_left_without_commit_leaves_nothing(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)

    async def abandoned() -> None:
        async with store.blob_upload("x") as up:
            await up.write(chunks(b"a" * 100_000))
            raise RuntimeError("checksum mismatch")

    with pytest.raises(RuntimeError, match="checksum mismatch"):
        await abandoned()
    assert [] == [p for p in (tmp_path / "x/blobs").rglob("*") if p.is_file()]


async def test_commit_with_another_digest_is_refused(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)
    async with store.blob_upload("x") as up:
        await up.write(chunks(b"abc"))
        with pytest.raises(DigestMismatchError):
            await up.commit(compute_digest(b"abd"))
    assert not await store.has_blob("x", compute_digest(b"abc"))


async def test_mount_links_a_blob_from_another_repository(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)
    desc = await store.put_blob("a", b"shared")
    assert await store.mount_blob("b", desc.digest, "a")
    assert not await store.mount_blob("b", compute_digest(b"absent"), "a")
    assert b"shared" == await store.get_blob("b", desc.digest, max_size=100)


async def test_commit_returns_the_digest_and_size_it_computed(tmp_path: Path) -> None:
    # chunks of different sizes, in flight one at a time: the blob keeps their order
    payload = bytes(range(256)) * 5000 + b"tail"
    store = LayoutStore(tmp_path)
    async with store.blob_upload("x") as up:
        await up.write(chunks(payload, 300_001))
        layer = await up.commit()
    assert (layer.digest, layer.size) == (compute_digest(payload), len(payload))
    assert await store.get_blob("x", layer.digest, max_size=len(payload)) == payload


async def test_a_source_failing_mid_write_leaves_nothing(tmp_path: Path) -> None:
    store = LayoutStore(tmp_path)

    async def failing() -> AsyncIterator[bytes]:
        yield b"a" * 300_000
        yield b"b" * 300_000
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        async with store.blob_upload("x") as up:
            await up.write(failing())
    assert [] == [p for p in (tmp_path / "x/blobs").rglob("*") if p.is_file()]
