"""`Hashing`: a stream's running hashes, fed in order from the event loop, batched off it."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

import pytest

from containerdisks.oci import digest as digest_module
from containerdisks.oci.digest import Hashing


async def test_batches_give_the_hash_of_the_whole_stream_in_order() -> None:
    rng = random.Random(7)
    data = rng.randbytes(3_000_000)
    sha256, sha512 = hashlib.sha256(), hashlib.sha512()
    hashing = Hashing(sha256, sha512, batch=100_000)
    at = 0
    while at < len(data):
        n = rng.choice([1, 17, 4096, 65_536, 250_000])
        if hashing.feed(data[at : at + n]):
            await hashing.flush()
        at += n
    await hashing.finish()
    assert sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert sha512.hexdigest() == hashlib.sha512(data).hexdigest()


async def test_a_batch_is_one_hand_off_and_a_small_tail_stays_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed: list[int] = []
    real = asyncio.to_thread

    async def counting(func, /, *args):  # type: ignore[no-untyped-def]
        handed.append(sum(len(c) for c in args[1]))
        return await real(func, *args)

    monkeypatch.setattr(digest_module.asyncio, "to_thread", counting)
    h = hashlib.sha256()
    hashing = Hashing(h, batch=1 << 20)
    for _ in range(8):
        if hashing.feed(bytes(256 << 10)):
            await hashing.flush()
    if hashing.feed(bytes(100 << 10)):
        await hashing.flush()
    await hashing.finish()
    assert handed == [1 << 20, 1 << 20]  # the last 100 KiB is hashed inline at the end
    assert h.hexdigest() == hashlib.sha256(bytes(8 * (256 << 10) + (100 << 10))).hexdigest()


async def test_a_cancelled_stream_holds_nothing() -> None:
    hashing = Hashing(hashlib.sha256(), batch=1 << 20)
    for _ in range(5):
        if hashing.feed(bytes(512 << 10)):
            await hashing.flush()
    hashing.cancel()
    assert hashing._chunks == []
    assert hashing._pending is None


async def test_settle_waits_for_the_batch_in_its_thread_and_hashes_nothing_more() -> None:
    class Slow:  # records what it hashed, slowly, in whatever thread calls it
        def __init__(self) -> None:
            self.seen: list[int] = []

        def update(self, data: bytes) -> None:
            time.sleep(0.2)
            self.seen.append(len(data))

    slow = Slow()
    hashing = Hashing(slow, batch=1 << 20)
    assert hashing.feed(bytes(1 << 20))  # a full batch
    await hashing.flush()  # handed to a thread
    assert not hashing.feed(bytes(10))  # held, never hashed
    await hashing.settle()
    assert slow.seen == [1 << 20]
