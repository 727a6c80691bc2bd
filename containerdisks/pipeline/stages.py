"""Streaming stages: async iterators of byte chunks, each testable alone.

A containerdisk is built in one pass: upstream bytes -> checksum -> (decompress) -> tar ->
(compress) -> registry. Every stage here takes an async iterator of `bytes` and yields one; digests
are side effects of the pass (`Digest`), as go-containerregistry's stream layer computes digest,
diff_id and size while it is read.

Decisions:
- CPU work on large buffers (hashing, compression, decompression) runs in a worker thread:
  hashlib, isal and lzma release the GIL, so it overlaps with network I/O on the other core and
  never stalls the event loop. Small buffers are handled inline (a thread hop costs more).
- Input is re-blocked to a fixed size before compression, so network read sizes cannot change
  the compressed bytes: the same upstream bytes give the same layer digest on every run. The
  blocks are two reused buffers, and the compressor (with the diff_id's hash beside it) runs on
  one thread of the stream's own: per-block allocations spread over the shared pool's threads
  fragmented every malloc arena and made RSS grow with the image size (benchmarks/README.md).
- The tar has exactly two members (`disk/` 0555 and `disk/disk.img` 0444, uid/gid 107, uname and
  gname `qemu`, mtime 0) in GNU format: no PAX records, sizes above 8 GiB in base-256. The file
  size must be known before its header is written.
- gzip is isal at level 1 (pinned in the dependencies: the compressor decides digests), with a
  header carrying no name and mtime 0; zstd is python-zstandard at level 3, also pinned.
- Upstream bytes are hostile until checked: decompression is fed in bounded steps (at most
  `BLOCK` bytes of output per call, the rest of the input kept for the next call), so a small
  bomb never becomes one huge buffer; `capped` cuts any stream at a byte limit. Memory stays
  flat whatever the input; a size limit is the caller's to set.
"""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import zstandard
from isal import isal_zlib

from containerdisks.oci.digest import Hashing
from containerdisks.pipeline import unpack
from containerdisks.pipeline.image import LayerCompression

__all__ = [
    "BLOCK",
    "Chunks",
    "Digest",
    "SizeLimitError",
    "capped",
    "compress",
    "decompress",
    "hashed",
    "tar_disk",
    "tar_size",
]

Chunks = AsyncIterator[bytes]

#: Fixed block size fed to compressors (and a good network chunk size).
BLOCK = 1 << 20
_INLINE = 64 << 10  # below this, CPU work is done inline
# Input per hand-off to the compressing thread: the compressor still gets exactly one `BLOCK`
# per call (the output bytes, hence the digests, depend on it), two calls per hand-off.
_CALL = 2 * BLOCK
_GZIP_LEVEL = 1
_ZSTD_LEVEL = 3
_UID = _GID = 107
_OWNER = "qemu"


_Buffer = bytes | bytearray | memoryview


class SizeLimitError(Exception):
    """A stream went past its byte limit; the message names the limit (the caller adds what)."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(f"{what} is larger than {limit} bytes")
        self.limit = limit


async def capped(source: Chunks, limit: int, what: str) -> Chunks:
    """Pass chunks through; raise `SizeLimitError` as soon as more than `limit` bytes came.

    The chunk that crosses the limit is not passed on: what follows never sees a byte too many.
    """
    seen = 0
    async for chunk in source:
        seen += len(chunk)
        if seen > limit:
            raise SizeLimitError(limit, what)
        yield chunk


class Digest:
    """A running hash with the byte count; `hexdigest`/`digest` once the stream is done."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self.hash = hashlib.new(algorithm)
        self.size = 0

    def feed(self, data: _Buffer) -> None:
        """Hash `data` here, in the calling thread (a worker's, for big buffers)."""
        self.size += len(data)
        self.hash.update(data)

    def hexdigest(self) -> str:
        return self.hash.hexdigest()

    @property
    def digest(self) -> str:
        """OCI form: `sha256:<hex>`."""
        return f"{self.algorithm}:{self.hexdigest()}"


async def hashed(source: Chunks, *digests: Digest) -> Chunks:
    """Pass chunks through, feeding every digest.

    Pipelined: a chunk is handed on while the hashes run in a worker thread, in batches of
    `HASH_BATCH` bytes (`containerdisks.oci.digest.Hashing`: a hand-off per chunk cost more CPU
    than copying it); the hashes have seen every chunk when the stream ends. Waiting for
    every hash before passing a chunk on serialised hashing with the network and cost about a
    quarter of the throughput (benchmarks/README.md).
    """
    hashing = Hashing(*(d.hash for d in digests))
    try:
        async for chunk in source:
            for d in digests:
                d.size += len(chunk)
            if hashing.feed(chunk):
                await hashing.flush()
            yield chunk
        await hashing.finish()
    finally:
        hashing.cancel()


async def decompress(source: Chunks, kind: Literal["gzip", "xz"]) -> Chunks:
    """Decompress gzip (several members allowed) or xz (several streams allowed).

    Each step of the `unpack` decoder produces at most `BLOCK` bytes, and each output chunk is
    handed on before the next step: a 156 KB xz of 1 GiB of zeros never holds more than a block.
    A step that only drains what the decoder holds runs in a worker thread (a block of xz output
    costs milliseconds). A member or stream that starts but does not end is a truncated
    download: `UnpackError`, a `ValueError`.
    """
    d = unpack.Stepped(kind, limit=BLOCK)
    async for chunk in source:
        steps = d.steps(chunk)
        if len(chunk) < _INLINE:
            out = next(steps, None)
        else:
            out = await asyncio.to_thread(next, steps, None)
        while out is not None:
            yield out
            out = await asyncio.to_thread(next, steps, None)
    d.finish()


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


def _member(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid, info.gid = _UID, _GID
    info.uname = info.gname = _OWNER
    return info


def _tar_head(size: int) -> bytes:
    return _header(_member("disk/", tarfile.DIRTYPE, 0o555, 0)) + _header(
        _member("disk/disk.img", tarfile.REGTYPE, 0o444, size)
    )


def tar_size(size: int) -> int:
    """Length of the tar `tar_disk` makes around a file of `size` bytes."""
    pad = -size % tarfile.BLOCKSIZE
    return len(_tar_head(size)) + size + pad + 2 * tarfile.BLOCKSIZE


async def tar_disk(size: int, body: Chunks) -> Chunks:
    """The containerdisk tar: `disk/` and `disk/disk.img` of exactly `size` bytes from `body`."""
    yield _tar_head(size)
    seen = 0
    async for chunk in body:
        seen += len(chunk)
        if seen > size:
            raise ValueError(f"disk image is larger than the announced {size} bytes")
        yield chunk
    if seen != size:
        raise ValueError(f"disk image ended after {seen} of {size} bytes")
    yield b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


async def compress(source: Chunks, kind: LayerCompression, digest: Digest | None = None) -> Chunks:
    """Compress fixed `BLOCK`-sized blocks of the input; `none` passes it through. `digest`,
    if given, is fed the uncompressed input (the diff_id) in the same worker call as each block.

    Memory and speed (benchmarks/README.md): the input is copied into two reused buffers of two
    `BLOCK`s (no per-block allocation, no bytes joining or slicing), and buffer *k* is hashed
    and compressed (one `BLOCK` per compressor call) while buffer *k + 1* is gathered, its
    output handed on before buffer *k + 2* may overwrite it. Two blocks per hand-off: a
    hand-off to the thread and back costs ~90 µs of CPU here. The work runs on one thread of the
    stream's own: the compressor's scratch and output buffers then come from one malloc arena;
    spread over the shared pool's threads they fragmented every arena, and RSS crept with the
    image size.
    """
    if kind == "none":
        async for chunk in source if digest is None else hashed(source, digest):
            yield chunk
        return
    compress_fn: Callable[[_Buffer], bytes]
    flush_fn: Callable[[], bytes]
    if kind == "gzip":
        c = isal_zlib.compressobj(_GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        compress_fn, flush_fn = c.compress, c.flush
    else:
        z = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, threads=0).compressobj()
        compress_fn, flush_fn = z.compress, z.flush

    def blocks(data: _Buffer) -> list[bytes]:
        if digest is not None:
            digest.feed(data)
        view = memoryview(data)
        return [
            out for at in range(0, len(view), BLOCK) if (out := compress_fn(view[at : at + BLOCK]))
        ]

    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compress")
    buffers = (bytearray(_CALL), bytearray(_CALL))
    current, filled = 0, 0
    running: asyncio.Future[list[bytes]] | None = None
    try:
        async for chunk in source:
            view = memoryview(chunk)
            while view:
                n = min(_CALL - filled, len(view))
                buffers[current][filled : filled + n] = view[:n]
                filled += n
                view = view[n:]
                if filled < _CALL:
                    continue
                if running is not None:
                    for out in await running:
                        yield out
                running = loop.run_in_executor(worker, blocks, buffers[current])
                current, filled = current ^ 1, 0
        if running is not None:
            done, running = await running, None
            for out in done:
                yield out
        if filled:
            tail = memoryview(buffers[current])[:filled]
            for out in await loop.run_in_executor(worker, blocks, tail):
                yield out
        tail_out = flush_fn()
        if tail_out:
            yield tail_out
    finally:
        # A block still in the worker (the consumer stopped) finishes there and is dropped;
        # nothing else touches its buffer or the compressor again.
        worker.shutdown(wait=False)
