"""Pulling a containerdisk's disk from the real registry: layers in every tar dialect and
compression a containerdisk may come in, and the images KubeVirt would refuse."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from containerdisks import oci
from containerdisks.verify.pull import PullError, _number, pull_disk
from tests.support.registry import Registry


def _tar(members: list[tuple[str, bytes | None]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o555
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def _publish(registry: Registry, *layers: bytes | str) -> str:
    """An image of `layers` (each its bytes then its media type); its manifest digest."""
    async with oci.RegistryClient(registry.host) as client:
        described = []
        for layer, layer_type in zip(layers[::2], layers[1::2], strict=True):
            assert isinstance(layer, bytes)
            assert isinstance(layer_type, str)
            blob = await client.put_blob("t/disk", layer, media_type=layer_type)
            described.append({"mediaType": layer_type, "digest": blob.digest, "size": blob.size})
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        cfg = await client.put_blob("t/disk", config, media_type=oci.OCI_CONFIG)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": cfg.media_type, "digest": cfg.digest, "size": cfg.size},
                "layers": described,
            }
        ).encode()
        return await client.put_manifest("t/disk", "1", oci.OCI_MANIFEST, manifest)


DISK = os.urandom(300_000) + b"\0" * 100_000  # not a multiple of 512


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        (tarfile.GNU_FORMAT, "disk/disk.img"),
        (tarfile.USTAR_FORMAT, "./disk/disk.img"),
        (tarfile.PAX_FORMAT, "disk/" + "d" * 150 + ".img"),  # a PAX path record
        (tarfile.GNU_FORMAT, "disk/" + "l" * 150 + ".img"),  # a GNU long-name member
    ],
)
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
async def test_the_disk_comes_out_byte_for_byte(
    registry: Registry, tmp_path: Path, fmt: int, name: str, compression: str
) -> None:
    tar = _tar([("disk", None), (name, DISK)], fmt)
    layer, layer_type = {
        "gzip": (gzip.compress(tar), oci.OCI_LAYER_GZIP),
        "zstd": (zstandard.ZstdCompressor().compress(tar), oci.OCI_LAYER_ZSTD),
        "none": (tar, oci.OCI_LAYER),
    }[compression]
    digest = await _publish(registry, layer, layer_type)
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        pulled = await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
    assert DISK == dest.read_bytes()
    assert (len(layer), len(DISK), digest) == (
        pulled.layer_bytes,
        pulled.disk_bytes,
        pulled.manifest_digest,
    )


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("disk", None)], "disk/ holds no file"),
        ([("disk/a.img", b"a"), ("disk/b.img", b"b")], "disk/ holds 2 files"),
        ([("other/disk.img", b"a")], "disk/ holds no file"),
        ([("disk/sub/disk.img", b"a")], "disk/ holds a subdirectory"),
    ],
)
async def test_an_image_kubevirt_would_refuse_is_one_line_and_leaves_no_file(
    registry: Registry, tmp_path: Path, members: list[tuple[str, bytes | None]], message: str
) -> None:
    digest = await _publish(
        registry, gzip.compress(_tar(members, tarfile.GNU_FORMAT)), oci.OCI_LAYER_GZIP
    )
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        with pytest.raises(PullError) as e:
            await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not dest.exists()


async def test_not_a_tar_and_a_missing_platform_are_named(
    registry: Registry, tmp_path: Path
) -> None:
    digest = await _publish(registry, gzip.compress(b"x" * 4096), oci.OCI_LAYER_GZIP)
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        with pytest.raises(PullError, match="not a tar archive"):
            await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
        with pytest.raises(PullError, match=r"manifest unknown|not found|unknown"):
            await pull_disk(client, "t/disk", "sha256:" + "0" * 64, "amd64", dest, where="t/disk")
    assert not dest.exists()


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ([("disk", None), ("disk/disk.img", DISK)], [("etc/motd", b"hi")], DISK),
        ([("disk/disk.img", b"old" * 1000)], [("disk/disk.img", DISK)], DISK),  # later wins
        ([("etc/motd", b"hi")], [("disk/disk.img", DISK)], DISK),
    ],
)
async def test_layers_apply_in_order_and_a_later_layer_without_a_disk_keeps_it(
    registry: Registry,
    tmp_path: Path,
    first: list[tuple[str, bytes | None]],
    second: list[tuple[str, bytes | None]],
    expected: bytes,
) -> None:
    digest = await _publish(
        registry,
        gzip.compress(_tar(first, tarfile.GNU_FORMAT)), oci.OCI_LAYER_GZIP,
        _tar(second, tarfile.GNU_FORMAT), oci.OCI_LAYER,
    )  # fmt: skip
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        pulled = await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
    assert expected == dest.read_bytes()
    assert len(expected) == pulled.disk_bytes


async def test_an_index_without_the_arch_is_named(registry: Registry, tmp_path: Path) -> None:
    arm = await _publish(
        registry, gzip.compress(_tar([("disk/disk.img", DISK)], tarfile.GNU_FORMAT)),
        oci.OCI_LAYER_GZIP,
    )  # fmt: skip
    async with oci.RegistryClient(registry.host) as client:
        size = len((await client.get_manifest("t/disk", arm)).data)
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": oci.OCI_MANIFEST,
                        "digest": arm,
                        "size": size,
                        "platform": {"os": "linux", "architecture": "arm64"},
                    }
                ],
            }
        ).encode()
        top = await client.put_manifest("t/disk", "multi", oci.OCI_INDEX, index)
        dest = tmp_path / "disk.img"
        with pytest.raises(PullError) as e:
            await pull_disk(client, "t/disk", top, "amd64", dest, where="t/disk@x")
        pulled = await pull_disk(client, "t/disk", top, "arm64", dest, where="t/disk@x")
    assert "t/disk@x has no linux/amd64 image" == str(e.value)
    assert (DISK, arm) == (dest.read_bytes(), pulled.manifest_digest)


def test_sizes_in_octal_and_base_256() -> None:
    assert 0o1234 == _number(b"00001234\0")
    assert 0 == _number(b"\0" * 12)
    assert 9 << 30 == _number(bytes([0x80]) + (9 << 30).to_bytes(11, "big"))  # > 8 GiB
