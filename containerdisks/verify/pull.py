"""Pull a containerdisk's disk by digest: registry -> layer digest check -> decompress -> untar
-> `disk.img`, in one streaming pass with no copy of the layer on disk.

Decisions:
- By digest only: the image verified is exactly the one push recorded (the results' `Digest`).
- A pipeline across threads, each stage's heavy work outside the GIL: the registry read (which
  hashes on a thread beside it) feeds a bounded queue; a consumer coalesces chunks and
  inflates them in a worker thread, which hands the output through a bounded `_Writer` to a
  thread of its own that parses the tar and writes the disk. The writer failing stops the
  inflate at its next piece and the read at its next chunk, and its error is the one told;
  when an attempt ends, however it ends, the writer thread has ended (a retry writes the same
  file). The file is only used after `read_blob` confirmed the layer digest; a mismatch or a
  cut stream deletes it. A transient failure pulls the layer again, bounded.
- Decompressing and reading the tar are `pipeline.unpack`'s (shared with push): the one file
  under `disk/` is written to the path the caller gave; zero or several files there is an
  error, as KubeVirt refuses such an image. The layer's media type says its compression through
  `pipeline.image.compression_of`, the one map push writes by.
- A registry is hostile until checked (the image may not come from us): decompression hands
  on at most `_OUT` bytes at a time (`pipeline/unpack.py`: gzip through `max_length`, zstd
  through a stream writer with a bounded `write_size`), at most `_PIPE` such pieces wait for
  the writer, the disk is cut at `max_bytes` (`max_image_bytes`), and a PAX or GNU long-name
  record larger than `MAX_META` is refused, so memory and disk stay bounded whatever the layer
  holds. Time stays bounded too: the layer is read to its descriptor's size and no further, a
  member outside `disk/` larger than `MAX_OTHER` is refused rather than read through, and
  after the end-of-archive block only zeros (record padding, at most `MAX_TRAILER` bytes) may
  follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from containerdisks import oci
from containerdisks.oci.media import parse_image_manifest
from containerdisks.pipeline.image import compression_of
from containerdisks.pipeline.unpack import DECODE_ERRORS, Decoder, TarDisk, UnpackError, decoder
from containerdisks.registry.stores import Store
from containerdisks.registry.walk import platform_manifest
from containerdisks.retry import RetryPolicy, retrying

__all__ = ["PullError", "Pulled", "pull_disk"]

log = structlog.get_logger(__name__)

_BATCH = 4 << 20  # bytes handed to the worker thread at once
_QUEUE = 16  # chunks in flight between the network and the worker
_OUT = 1 << 20  # the most decompressed bytes handed on at once
_PIPE = 8  # decompressed pieces waiting for the writer thread
#: What a pull that cannot go on raises, turned into one `PullError` line.
_FAILURES: tuple[type[Exception], ...] = (oci.OCIError, ValueError, *DECODE_ERRORS)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class PullError(Exception):
    """The image or its disk could not be pulled; one line."""


class _StoppedError(Exception):
    """The attempt ended before the inflate did: its pieces have nowhere to go."""


class _Writer:
    """A thread that feeds `tar` the pieces `put` hands it, in order; at most `_PIPE` wait."""

    def __init__(self, tar: TarDisk) -> None:
        self._tar = tar
        self._items: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._ended = False  # no more pieces: the input ended or the attempt is over
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pull-writer", daemon=True)
        self._thread.start()

    def put(self, piece: bytes) -> None:
        """Queue `piece`; raises the writer's error once it failed, `_StoppedError` once ended."""
        with self._cond:
            while len(self._items) >= _PIPE and self.error is None and not self._ended:
                self._cond.wait()
            if self.error is not None:
                raise self.error
            if self._ended:
                raise _StoppedError
            self._items.append(piece)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._ended:
                    self._cond.wait()
                if not self._items:
                    return
                piece = self._items.popleft()
                self._cond.notify_all()
            try:
                self._tar.feed(piece)
            except BaseException as e:  # told by `put`, `check` and `close`
                with self._cond:
                    self.error = e
                    self._items.clear()
                    self._cond.notify_all()
                return

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self, *, drop: bool) -> None:
        """End the input (`drop`: without writing what waits) and wait for the thread."""
        with self._cond:
            self._ended = True
            if drop:
                self._items.clear()
            self._cond.notify_all()
        self._thread.join()


@dataclass(frozen=True)
class Pulled:
    manifest_digest: str
    layer_bytes: int
    disk_bytes: int
    seconds: float


def _decoder(media_type: str, name: str) -> Decoder:
    kind = compression_of(media_type)
    if kind is None:
        raise PullError(f"unsupported layer media type {media_type}")
    return decoder(kind, limit=_OUT, name=name)


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
    name = f"layer {layer.digest[:19]} of {where}"
    decompressor = _decoder(layer.media_type, name)
    tar = TarDisk(out, name, max_bytes)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE)
    writer = _Writer(tar)

    def work(batch: list[bytes]) -> None:
        for chunk in batch:
            decompressor.feed(chunk, writer.put)

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
        writer.check()  # the writer failed: stop reading
        if consumer.done():  # the inflate failed
            consumer.result()
        await queue.put(chunk)

    done = False
    try:
        layer_bytes = await store.read_blob(repository, layer.digest, sink, size=layer.size)
        await queue.put(None)
        await consumer
        decompressor.finish()
        done = True
    finally:
        if not consumer.done():
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
        # An inflate still running in its thread gets `_StoppedError` at its next piece; no thread
        # writes `out` once this returns.
        await asyncio.to_thread(writer.close, drop=not done)
    writer.check()
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
        manifest = await platform_manifest(store, repository, top, goarch, where)
        if manifest is None:
            raise PullError(f"{where} has no linux/{goarch} image")
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
    except UnpackError as e:  # it names the layer
        _remove(dest)
        raise PullError(str(e)) from None
    except _FAILURES as e:
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
