"""Pulling a containerdisk's disk from the real registry: layers in every tar dialect and
compression a containerdisk may come in, and the images KubeVirt would refuse."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import tarfile
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from containerdisks import oci
from containerdisks.pipeline.unpack import _number
from containerdisks.verify.pull import PullError, pull_disk
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


@pytest.fixture(autouse=True)
def _no_writer_thread_outlives_a_pull() -> Iterator[None]:
    yield
    left = [t.name for t in threading.enumerate() if t.name == "pull-writer"]
    assert not left, f"{len(left)} writer threads still running after the pull returned"


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
        ([("disk/disk.img", DISK)], [("disk/disk.img", b"new")], b"new"),  # and is cut to its size
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


def _bomb(disk_size: int, compression: str) -> bytes:
    """A layer holding `disk/disk.img` of `disk_size` zero bytes, compressed as it is made
    (the tar is never in memory whole): a few hundred KB at most."""
    head = b"".join(
        _member(name, kind, size).tobuf(format=tarfile.GNU_FORMAT)
        for name, kind, size in (("disk", tarfile.DIRTYPE, 0), ("disk/disk.img", None, disk_size))
    )
    compressor: Any = (
        zlib.compressobj(9, zlib.DEFLATED, 31)
        if compression == "gzip"
        else zstandard.ZstdCompressor().compressobj()
    )
    out = [compressor.compress(head)]
    block = b"\0" * (1 << 20)
    for _ in range(disk_size // len(block)):
        out.append(compressor.compress(block))
    out.append(compressor.compress(b"\0" * 1024))  # the two end-of-archive blocks
    out.append(compressor.flush())
    return b"".join(out)


def _member(name: str, kind: bytes | None, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind or tarfile.REGTYPE
    info.size = size
    return info


_LAYER_TYPES = {"gzip": oci.OCI_LAYER_GZIP, "zstd": oci.OCI_LAYER_ZSTD}


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_a_bomb_layer_is_pulled_in_bounded_memory(
    registry: Registry, tmp_path: Path, compression: str
) -> None:
    size = 128 << 20
    digest = await _publish(registry, _bomb(size, compression), _LAYER_TYPES[compression])
    dest = tmp_path / "disk.img"
    tracemalloc.start()
    try:
        async with oci.RegistryClient(registry.host) as client:
            pulled = await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == pulled.disk_bytes == dest.stat().st_size
    assert peak < 32 << 20, f"peak {peak >> 20} MiB while pulling a {size >> 20} MiB disk"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
async def test_a_disk_over_max_image_bytes_is_cut_and_removed(
    registry: Registry, tmp_path: Path, compression: str
) -> None:
    digest = await _publish(registry, _bomb(64 << 20, compression), _LAYER_TYPES[compression])
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        with pytest.raises(PullError) as e:
            await pull_disk(
                client, "t/disk", digest, "amd64", dest, where="t/disk", max_bytes=8 << 20
            )
    assert str(e.value).endswith(f"the disk is larger than max_image_bytes ({8 << 20} bytes)")
    assert not dest.exists()


async def test_a_huge_tar_header_record_is_refused(registry: Registry, tmp_path: Path) -> None:
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, 8 << 20
    layer = gzip.compress(pax.tobuf(format=tarfile.USTAR_FORMAT) + b"9" * (8 << 20))
    digest = await _publish(registry, layer, oci.OCI_LAYER_GZIP)
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        with pytest.raises(PullError, match="a tar header record over 1048576 bytes"):
            await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
    assert not dest.exists()


def _huge_member() -> bytes:
    """A tar whose member outside disk/ claims 64 GiB (a few bytes of it follow)."""
    info = tarfile.TarInfo("var/huge")
    info.size = 64 << 30
    return info.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 4096


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (_tar([("disk/disk.img", DISK)], tarfile.GNU_FORMAT) + b"garbage", "data after the end"),
        (  # 8 MiB of zeros after the end: more than any record padding
            _tar([("disk/disk.img", DISK)], tarfile.GNU_FORMAT) + bytes(8 << 20),
            "more than 1048576 bytes after the end of the tar archive",
        ),
        (
            _huge_member(),
            f"var/huge is {64 << 30} bytes; outside disk/ a containerdisk holds nothing over",
        ),
    ],
    ids=["trailing-garbage", "trailing-zeros", "huge-member"],
)
async def test_data_past_the_tar_and_a_huge_member_outside_disk_are_refused(
    registry: Registry, tmp_path: Path, layer: bytes, message: str
) -> None:
    digest = await _publish(registry, gzip.compress(layer), oci.OCI_LAYER_GZIP)
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        with pytest.raises(PullError) as e:
            await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk@x")
    assert str(e.value).startswith("layer sha256:"), e.value
    assert f" of t/disk@x: {message}" in str(e.value)
    assert "\n" not in str(e.value)
    assert not dest.exists()


async def test_a_corrupt_deflate_stream_fails_the_inflate_thread_in_one_line(
    registry: Registry, tmp_path: Path
) -> None:
    tar = _tar([("disk/disk.img", os.urandom(600_000))], tarfile.GNU_FORMAT)
    layer = bytearray(gzip.compress(tar, compresslevel=1))
    layer[len(layer) // 2 : len(layer) // 2 + 64] = bytes(64)  # the registry stores it as it is
    digest = await _publish(registry, bytes(layer), oci.OCI_LAYER_GZIP)
    dest = tmp_path / "disk.img"
    async with oci.RegistryClient(registry.host) as client:
        with pytest.raises(PullError) as e:
            await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
    assert str(e.value).startswith("t/disk: "), e.value
    assert "\n" not in str(e.value)
    assert not dest.exists()


async def test_a_failing_write_stops_the_pull_with_its_error(
    registry: Registry, tmp_path: Path
) -> None:
    """The writer thread's own error (here ENOSPC, from the real /dev/full) is the one raised."""
    tar = _tar([("disk/disk.img", DISK)], tarfile.GNU_FORMAT)
    digest = await _publish(registry, gzip.compress(tar), oci.OCI_LAYER_GZIP)
    dest = tmp_path / "disk.img"
    dest.symlink_to("/dev/full")
    async with oci.RegistryClient(registry.host) as client:
        with pytest.raises(OSError, match="No space left on device") as e:
            await pull_disk(client, "t/disk", digest, "amd64", dest, where="t/disk")
    assert e.value.errno == errno.ENOSPC
    assert not dest.is_symlink()  # the link is removed, not what it points to
