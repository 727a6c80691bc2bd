"""Content digests: parse ``algorithm:hex`` strings, compute and verify them.

Decisions:
- Only the algorithms the OCI image spec registers (sha256, sha512) are accepted, with
  their exact lowercase-hex lengths, so a malformed digest is refused where it enters the program
  instead of failing later as a confusing registry 400 or a silent mismatch.
- A stream's running hash (`Hashing`) runs in a worker thread, one batch of chunks at a time
  (`HASH_BATCH` bytes), not one chunk at a time: each hand-off to a thread and back costs
  ~90 µs of CPU here (a future, a wake-up of the worker, one of the event loop), so hashing
  1 GiB in 1 MiB chunks paid ~0.1 CPU-s for the hand-offs alone, per hash
  (benchmarks/README.md). A batch's chunks stay referenced until it is hashed: at most two
  batches per hash are held (one hashing, one filling).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from typing import Any, Final

from containerdisks.oci.errors import DigestMismatchError, InvalidReferenceError

__all__ = ["HASH_BATCH", "Hashing", "compute_digest", "is_digest", "parse_digest", "verify_digest"]

#: Bytes hashed per hand-off to a worker thread.
HASH_BATCH: Final = 2 << 20
_INLINE: Final = 256 << 10  # a last batch smaller than this is hashed on the event loop

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


def parse_digest(value: str) -> tuple[str, str]:
    """Split ``sha256:<64 hex>`` into (algorithm, hex); raise InvalidReferenceError otherwise."""
    match = _DIGEST.match(value)
    if match is None:
        raise InvalidReferenceError(value, "a digest is <algorithm>:<hex>")
    algorithm, hexpart = match.groups()
    length = _HEX_LENGTH.get(algorithm)
    if length is None:
        raise InvalidReferenceError(value, f"unsupported digest algorithm {algorithm!r}")
    if len(hexpart) != length or not all(c in "0123456789abcdef" for c in hexpart):
        raise InvalidReferenceError(
            value, f"a {algorithm} digest has {length} lowercase hex digits"
        )
    return algorithm, hexpart


def is_digest(value: str) -> bool:
    """Whether ``value`` is a well-formed, supported digest."""
    try:
        parse_digest(value)
    except InvalidReferenceError:
        return False
    return True


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of ``data`` with ``algorithm`` (``sha256`` or ``sha512``)."""
    if algorithm not in _HEX_LENGTH:
        raise InvalidReferenceError(algorithm, "unsupported digest algorithm")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, expected: str, *, subject: str) -> None:
    """Raise DigestMismatchError unless ``data`` hashes to ``expected``."""
    algorithm, _ = parse_digest(expected)
    actual = compute_digest(data, algorithm)
    if actual != expected:
        raise DigestMismatchError(subject, expected=expected, actual=actual)


def _update(hashes: Sequence[Any], chunks: Sequence[bytes | bytearray | memoryview]) -> None:
    for chunk in chunks:
        for h in hashes:
            h.update(chunk)


class Hashing:
    """Feed one stream's chunks, in order, to one or more `hashlib` objects off the event loop.

    `feed(chunk)` takes a chunk and says whether a batch is full: then `await flush()` (it hands
    the batch to a thread, after waiting for the previous one) before feeding more; `feed` is
    not a coroutine because a pull feeds tens of thousands of small pieces per GiB. `await
    finish()` once the stream has ended. If it will not end: `cancel()` (a batch
    already in its thread finishes there and is dropped) or `await settle()` (waits for that
    batch: no thread is left working for this stream). Chunks must not change after `feed`.
    """

    def __init__(self, *hashes: Any, batch: int = HASH_BATCH) -> None:
        self._hashes = hashes
        self._limit = batch
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._held = 0
        self._pending: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> bool:
        self._chunks.append(chunk)
        self._held += len(chunk)
        return self._held >= self._limit

    async def flush(self) -> None:
        await self._wait()
        chunks, self._chunks, self._held = self._chunks, [], 0
        self._pending = asyncio.ensure_future(asyncio.to_thread(_update, self._hashes, chunks))

    async def finish(self) -> None:
        """Hash what is left; every hash has then seen every chunk fed."""
        if self._held >= _INLINE:
            await self.flush()
        await self._wait()
        chunks, self._chunks, self._held = self._chunks, [], 0
        _update(self._hashes, chunks)

    def cancel(self) -> None:
        self._chunks, self._held = [], 0
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    async def settle(self) -> None:
        """Hash nothing more; wait for the batch still in its thread, if any."""
        self._chunks, self._held = [], 0
        await self._wait(shielded=True)

    async def _wait(self, *, shielded: bool = False) -> None:
        """Wait for the batch in its thread, if any (shielded: a cancelled wait leaves it be)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await (asyncio.shield(pending) if shielded else pending)
