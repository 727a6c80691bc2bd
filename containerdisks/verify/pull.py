"""Pull a containerdisk's disk by digest: registry -> layer digest check -> decompress -> untar
-> `disk.img`, in one streaming pass with no copy of the layer on disk.

Decisions:
- By digest only: the image verified is exactly the one push recorded (the results' `Digest`).
- Network, hashing and unpacking overlap: the registry read (which hashes as it goes) feeds a
  bounded queue; a consumer coalesces chunks and decompresses, parses and writes them in a
  worker thread. The file is only used after `read_blob` confirmed the layer digest; a
  mismatch or a cut stream deletes it. A transient failure pulls the layer again, bounded.
- The tar reader is written here because `tarfile` reads only from a blocking file object, and
  a containerdisk needs little of it: regular files, directories, PAX and GNU long names, sizes
  in octal or base-256. Nothing is created from member names: the one file under `disk/` is
  written to the path the caller gave; zero or several files there is an error, as KubeVirt
  refuses such an image. Later layers win, as in an overlay.
- A registry is hostile until checked (the image may not come from us): decompression hands
  on at most `_OUT` bytes at a time (gzip through `max_length`, zstd through a stream writer
  with a bounded `write_size`), the disk is cut at `max_bytes` (`max_image_bytes`), and a PAX
  or GNU long-name record larger than `_MAX_META` is refused, so memory and disk stay bounded
  whatever the layer holds. Time stays bounded too: the layer is read to its descriptor's size
  and no further, a member outside `disk/` larger than `_MAX_OTHER` is refused rather than read
  through, and after the end-of-archive block only zeros (record padding, at most
  `_MAX_TRAILER` bytes) may follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

import structlog
import zstandard
from isal import isal_zlib

from containerdisks import oci
from containerdisks.engine.stores import Store
from containerdisks.oci.media import parse_image_manifest, parse_index
from containerdisks.retry import RetryPolicy, retrying

__all__ = ["PullError", "Pulled", "pull_disk"]

log = structlog.get_logger(__name__)

_BLOCK = 512
_BATCH = 4 << 20  # bytes handed to the worker thread at once
_QUEUE = 16  # chunks in flight between the network and the worker
_OUT = 1 << 20  # the most decompressed bytes handed on at once
_MAX_META = 1 << 20  # the largest PAX or GNU long-name record
_MAX_OTHER = 1 << 20  # the largest member outside disk/ (a containerdisk has none)
_MAX_TRAILER = 1 << 20  # zero bytes accepted after the end-of-archive block (record padding)


_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment] # stubs call it an instance


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class PullError(Exception):
    """The image or its disk could not be pulled; one line."""


@dataclass(frozen=True)
class Pulled:
    manifest_digest: str
    layer_bytes: int
    disk_bytes: int
    seconds: float


Emit = Callable[[bytes], object]


class _Decompressor(Protocol):
    def feed(self, data: bytes, emit: Emit) -> None:
        """Decompress `data`, calling `emit` with chunks of at most `_OUT` bytes."""

    def finish(self) -> None: ...


class _Gzip:
    def __init__(self) -> None:
        self._d = isal_zlib.decompressobj(wbits=31)
        self._open = False

    def feed(self, data: bytes, emit: Emit) -> None:
        while True:
            if data:
                self._open = True
            out = self._d.decompress(data, _OUT)
            if out:
                emit(out)
            if self._d.eof:
                data, self._open = self._d.unused_data, False
                self._d = isal_zlib.decompressobj(wbits=31)
                if not data:
                    return
                continue
            data = self._d.unconsumed_tail
            if not data and len(out) < _OUT:  # a full block may have left output behind
                return

    def finish(self) -> None:
        if self._open:
            raise PullError("the layer's gzip stream is truncated")


class _Emitter:
    """The file a zstd stream writer writes to: each write goes to `emit`."""

    def __init__(self) -> None:
        self.emit: Emit = lambda _: None

    def write(self, data: Any) -> int:
        self.emit(data)
        return len(data)


class _Zstd:
    def __init__(self) -> None:
        self._sink = _Emitter()
        # The writer decompresses frame after frame and writes at most `_OUT` bytes at a time.
        self._w = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], self._sink), write_size=_OUT
        )

    def feed(self, data: bytes, emit: Emit) -> None:
        self._sink.emit = emit
        self._w.write(data)

    def finish(self) -> None:
        return None


class _Plain:
    def feed(self, data: bytes, emit: Emit) -> None:
        emit(data)

    def finish(self) -> None:
        return None


def _decompressor(media_type: str) -> _Decompressor:
    if media_type.endswith("gzip"):
        return _Gzip()
    if media_type.endswith("+zstd"):
        return _Zstd()
    if media_type.endswith((".tar", "layer.v1.tar")):
        return _Plain()
    raise PullError(f"unsupported layer media type {media_type}")


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    while data:
        length_text, _, rest = data.partition(b" ")
        length = int(length_text)
        record = data[len(length_text) + 1 : length]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        data = data[length:]
        del rest
    return out


class _TarDisk:
    """A push parser for a tar stream that writes the one regular file under `disk/` to `out`."""

    def __init__(self, out: IO[bytes], layer: str, max_bytes: int | None = None) -> None:
        self._out = out
        self._layer = layer
        self._max = max_bytes
        self._buf = bytearray()
        self._left = 0  # bytes of the current member's data still to come
        self._pad = 0
        self._sink: Callable[[memoryview], object] | None = None
        self._meta: bytearray | None = None  # collecting a PAX or GNU long-name member
        self._meta_kind = b""
        self._pending: dict[str, str] = {}
        self._ended = False
        self._trailer = 0  # bytes after the end-of-archive block
        self.found: list[str] = []
        self.disk_bytes = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._ended:
                self._after_end(view)
                return
            if self._left:
                n = min(self._left, len(view))
                self._data(view[:n])
                view = view[n:]
                self._left -= n
                if not self._left:
                    self._end_member()
                continue
            if self._pad:
                n = min(self._pad, len(view))
                view, self._pad = view[n:], self._pad - n
                continue
            need = _BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == _BLOCK:
                header, self._buf = bytes(self._buf), bytearray()
                self._header(header)

    def _after_end(self, view: memoryview) -> None:
        self._trailer += len(view)
        if view.tobytes().count(0) != len(view):
            raise PullError(f"{self._layer}: data after the end of the tar archive")
        if self._trailer > _MAX_TRAILER:
            raise PullError(
                f"{self._layer}: more than {_MAX_TRAILER} bytes after the end of the tar archive"
            )

    def _data(self, chunk: memoryview) -> None:
        if self._meta is not None:
            if len(self._meta) + len(chunk) > _MAX_META:
                raise PullError(f"{self._layer}: a tar header record over {_MAX_META} bytes")
            self._meta += chunk
        elif self._sink is not None:
            self.disk_bytes += len(chunk)
            if self._max is not None and self.disk_bytes > self._max:
                raise PullError(
                    f"{self._layer}: the disk is larger than max_image_bytes ({self._max} bytes)"
                )
            self._sink(chunk)

    def _end_member(self) -> None:
        if self._meta is not None:
            meta, kind, self._meta = bytes(self._meta), self._meta_kind, None
            if kind == b"x":
                self._pending.update(_pax(meta))
            elif kind == b"L":
                self._pending["path"] = meta.split(b"\0", 1)[0].decode("utf-8", "replace")
        self._sink = None

    def _header(self, header: bytes) -> None:
        if header == b"\0" * _BLOCK:
            self._ended = True
            return
        try:
            stored = _number(header[148:156])
        except ValueError:
            stored = -1
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise PullError(f"{self._layer}: not a tar archive (bad header checksum)")
        kind = header[156:157] or b"0"
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345] != 0:
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            name = f"{prefix}/{name}"
        size = _number(header[124:136])
        pending, self._pending = self._pending, {}
        if kind in (b"x", b"L"):
            self._meta, self._meta_kind = bytearray(), kind
            self._pending = pending  # a long name may follow a PAX header and vice versa
        elif kind == b"g":
            self._meta, self._meta_kind = None, kind
        else:
            name = pending.get("path", name)
            size = int(pending.get("size", size))
            path = name.removeprefix("./").lstrip("/")
            if path.startswith("disk/") and path.rstrip("/") != "disk":
                if kind not in (b"0", b"\0", b"7"):
                    raise PullError(f"{self._layer}: {path} is not a regular file")
                if "/" in path.removeprefix("disk/"):
                    raise PullError(f"{self._layer}: {path}: disk/ holds a subdirectory")
                self.found.append(path)
                self._out.seek(0)
                self._out.truncate()
                self.disk_bytes = 0
                self._sink = self._out.write
            elif size > _MAX_OTHER:
                raise PullError(
                    f"{self._layer}: {path or name} is {size} bytes; outside disk/ a containerdisk "
                    f"holds nothing over {_MAX_OTHER}"
                )
        self._left = size
        self._pad = -size % _BLOCK
        if not size:
            self._end_member()

    def finish(self) -> None:
        if self._left or self._buf:
            raise PullError(f"{self._layer}: the tar stream is truncated")


async def _pull_layer(
    store: Store,
    repository: str,
    layer: oci.Descriptor,
    out: IO[bytes],
    where: str,
    *,
    max_bytes: int | None = None,
) -> tuple[int, list[str], int]:
    """One attempt: stream `layer` into `out`; (layer bytes, files under disk/, disk bytes)."""
    decompressor = _decompressor(layer.media_type)
    tar = _TarDisk(out, f"layer {layer.digest[:19]} of {where}", max_bytes)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE)

    def work(batch: list[bytes]) -> None:
        for chunk in batch:
            decompressor.feed(chunk, tar.feed)

    async def consume() -> None:
        batch: list[bytes] = []
        size = 0
        while True:
            chunk = await queue.get()
            if chunk is not None:
                batch.append(chunk)
                size += len(chunk)
            if batch and (chunk is None or size >= _BATCH or queue.empty()):
                # Handed over as a list: joining would copy every byte once more.
                data, batch, size = batch, [], 0
                await asyncio.to_thread(work, data)
            if chunk is None:
                return

    consumer = asyncio.create_task(consume())

    async def sink(chunk: bytes) -> None:
        if consumer.done():  # the worker failed: stop reading
            consumer.result()
        await queue.put(chunk)

    try:
        layer_bytes = await store.read_blob(repository, layer.digest, sink, size=layer.size)
        await queue.put(None)
        await consumer
    finally:
        if not consumer.done():
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, PullError, ValueError):
                await consumer
    decompressor.finish()
    tar.finish()
    return layer_bytes, tar.found, tar.disk_bytes


async def pull_disk(
    store: Store,
    repository: str,
    digest: str,
    goarch: str,
    dest: Path,
    *,
    where: str,
    backoff: RetryPolicy | None = None,
    max_bytes: int | None = None,
) -> Pulled:
    """Write the disk of `repository@digest` for linux/`goarch` to `dest`; a disk larger than
    `max_bytes` is a `PullError`."""
    start = time.monotonic()
    policy = backoff or RetryPolicy.for_registry()
    try:
        top = await store.get_manifest(repository, digest)
        manifest = top
        if top.is_index:
            wanted = oci.Platform("linux", goarch)
            match = next(
                (
                    e
                    for e in parse_index(top, where)
                    if e.platform is not None
                    and (e.platform.os, e.platform.architecture) == (wanted.os, goarch)
                ),
                None,
            )
            if match is None:
                raise PullError(f"{where} has no linux/{goarch} image")
            manifest = await store.get_manifest(repository, match.digest)
        image = parse_image_manifest(manifest, where)
        if not image.layers:
            raise PullError(f"{where}: the image has no layers")
        found: list[str] = []
        layer_total = disk_bytes = 0
        with dest.open("wb") as out:
            for layer in image.layers:
                # No truncation here: a layer that holds no disk/ file must leave the disk an
                # earlier layer wrote, and one that does restarts the file at its member.
                async def attempt(layer: oci.Descriptor = layer) -> tuple[int, list[str], int]:
                    return await _pull_layer(
                        store, repository, layer, out, where, max_bytes=max_bytes
                    )

                got, files, size = await retrying(f"pull {where}", attempt, policy, kind="restream")
                layer_total += got
                if files:
                    found, disk_bytes = files, size
        if len(found) != 1:
            what = "no file" if not found else f"{len(found)} files ({', '.join(found)})"
            raise PullError(f"{where}: disk/ holds {what}; a containerdisk has exactly one")
    except (oci.OCIError, ValueError, zstandard.ZstdError, _ISAL_ERROR) as e:
        _remove(dest)
        raise PullError(f"{where}: {e}") from None
    except BaseException:
        _remove(dest)
        raise
    seconds = time.monotonic() - start
    log.info(
        "disk_pulled",
        image=where,
        layer_bytes=layer_total,
        disk_bytes=disk_bytes,
        seconds=round(seconds, 2),
        mb_per_s=round(layer_total / 1e6 / max(seconds, 1e-6), 1),
    )
    return Pulled(manifest.digest, layer_total, disk_bytes, seconds)
