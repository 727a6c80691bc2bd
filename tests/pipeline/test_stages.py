"""The streaming stages, each alone, checked with independent tools (tarfile, gzip, lzma, zstd)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import lzma
import os
import random
import tarfile
import threading
from collections.abc import AsyncIterator

import pytest
import zstandard
from isal import isal_zlib

from containerdisks.pipeline.stages import (
    BLOCK,
    Digest,
    SizeLimitError,
    capped,
    compress,
    decompress,
    hashed,
    tar_disk,
    tar_size,
)


def sample(size: int = 3 << 20) -> bytes:
    """Mixed random and zero regions, like a qcow2 with sparse areas."""
    rnd = random.Random(7)
    parts = []
    while sum(map(len, parts)) < size:
        parts.append(rnd.randbytes(rnd.randrange(1, 300_000)))
        parts.append(b"\0" * rnd.randrange(1, 300_000))
    return b"".join(parts)[:size]


async def chunked(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    i = 0
    k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        yield data[i : i + n]
        i += n
        k += 1


async def collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in it])


CHUNKINGS = [[1 << 20], [4096], [65536, 1, 999_999, 7], [3 << 20]]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
async def test_compressed_bytes_do_not_depend_on_read_sizes(kind: str) -> None:
    data = sample()
    outputs = {await collect(compress(chunked(data, s), kind)) for s in CHUNKINGS}  # type: ignore[arg-type]
    assert 1 == len(outputs)
    (out,) = outputs
    if kind == "gzip":
        assert data == gzip.decompress(out)
        assert b"\x1f\x8b\x08\x00\x00\x00\x00\x00" == out[:8]  # no name, mtime 0
    elif kind == "zstd":
        assert data == zstandard.ZstdDecompressor().decompressobj().decompress(out)
    else:
        assert data == out


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
async def test_compressed_bytes_are_those_of_fixed_blocks(kind: str) -> None:
    """The layer's bytes are the compressor fed `BLOCK` bytes per call (the digests depend on
    it: isal's output changes with the call boundaries), whatever the reads were."""
    data = sample((2 << 20) + 12_345)
    if kind == "gzip":
        c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
        step, end = c.compress, c.flush
    else:
        z = zstandard.ZstdCompressor(level=3).compressobj()
        step, end = z.compress, z.flush
    expected = b"".join(step(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK)) + end()
    assert expected == await collect(compress(chunked(data, [1024, BLOCK]), kind))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("sizes", CHUNKINGS)
async def test_compress_hashes_the_uncompressed_bytes(kind: str, sizes: list[int]) -> None:
    data = sample((2 << 20) + 777)
    diff = Digest()
    await collect(compress(chunked(data, sizes), kind, diff))  # type: ignore[arg-type]
    assert (len(data), hashlib.sha256(data).hexdigest()) == (diff.size, diff.hexdigest())


async def test_compress_stopped_early_leaves_no_worker_behind() -> None:
    stream = compress(chunked(sample(), [BLOCK]), "gzip")
    assert await anext(stream)
    await stream.aclose()
    for _ in range(200):  # the worker ends once its block is done: bounded wait
        if not any(t.name.startswith("compress") for t in threading.enumerate()):
            break
        await asyncio.sleep(0.01)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("compress")]


async def test_digest_counts_and_hashes_in_one_pass() -> None:
    data = sample(2_000_000)
    a, b = Digest(), Digest("sha512")
    out = await collect(hashed(chunked(data, [123_457]), a, b))
    assert data == out
    assert (len(data), hashlib.sha256(data).hexdigest()) == (a.size, a.hexdigest())
    assert hashlib.sha512(data).hexdigest() == b.hexdigest()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == a.digest


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1_000_003])
async def test_tar_holds_exactly_the_containerdisk_layout(size: int) -> None:
    disk = os.urandom(size)
    tar = await collect(tar_disk(size, chunked(disk, [65536])))
    assert tar_size(size) == len(tar)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        members = t.getmembers()
        assert [("disk", 0o555, True), ("disk/disk.img", 0o444, False)] == [
            (m.name, m.mode, m.isdir()) for m in members
        ]
        assert {(107, 107, "qemu", "qemu", 0)} == {
            (m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members
        }
        assert [] == [m.pax_headers for m in members if m.pax_headers]
        f = t.extractfile("disk/disk.img")
        assert f is not None
        assert disk == f.read()


async def test_tar_refuses_a_body_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="ended after 10 of 11 bytes"):
        await collect(tar_disk(11, chunked(b"x" * 10, [4])))
    with pytest.raises(ValueError, match="larger than the announced 9 bytes"):
        await collect(tar_disk(9, chunked(b"x" * 10, [4])))


@pytest.mark.parametrize("kind", ["gzip", "xz"])
async def test_decompress_roundtrip_and_multi_member(kind: str) -> None:
    data = sample(1_000_000)
    pack = gzip.compress if kind == "gzip" else lzma.compress
    two = pack(data[:400_000]) + pack(data[400_000:])
    assert data == await collect(decompress(chunked(two, [7777]), kind))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["gzip", "xz"])
async def test_decompress_detects_truncation(kind: str) -> None:
    packed = (gzip.compress if kind == "gzip" else lzma.compress)(sample(500_000))
    with pytest.raises(ValueError, match=f"truncated {kind} stream"):
        await collect(decompress(chunked(packed[: len(packed) // 2], [4096]), kind))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["gzip", "xz"])
async def test_decompress_hands_on_at_most_a_block_at_a_time(kind: str) -> None:
    """A bomb (64 MiB of zeros in one member) comes out in blocks, never as one buffer."""
    zeros = b"\0" * (64 << 20)
    packed = gzip.compress(zeros, compresslevel=9) if kind == "gzip" else lzma.compress(zeros)
    assert len(packed) < 200_000
    sizes = [len(c) async for c in decompress(chunked(packed, [len(packed)]), kind)]  # type: ignore[arg-type]
    assert 64 << 20 == sum(sizes)
    assert BLOCK == max(sizes)
    assert len(sizes) >= 64


async def test_capped_passes_up_to_the_limit_and_cuts_past_it() -> None:
    data = b"x" * 1000
    assert data == await collect(capped(chunked(data, [300]), 1000, "image"))
    passed: list[bytes] = []

    async def pass_on() -> None:
        async for chunk in capped(chunked(data, [300]), 999, "image"):
            passed.append(chunk)

    with pytest.raises(SizeLimitError) as e:
        await pass_on()
    assert "image is larger than 999 bytes" == str(e.value)
    assert 900 == sum(map(len, passed))  # the chunk that crosses the limit is not passed on
