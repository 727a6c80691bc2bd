"""Retrying what failed for a reason that may pass: bounded, with backoff, jitter, Retry-After.

One policy for the engine's registry operations and for whole arch builds. What is worth a retry
is decided by the error itself: `OCIError.temporary` (connection trouble, timeouts, 408/429/5xx)
and an interrupted upstream download. Everything else (a checksum mismatch, 401/403/404, a bad
manifest) fails at once: retrying it only delays the one clear line the user needs.

A transient failure in the middle of a layer upload is handled by streaming the arch again from
upstream (resuming the upload would do too; restreaming needs no replay buffer and keeps
memory flat, at the price of downloading the arch's bytes again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog

from containerdisks import oci
from containerdisks.upstream import DownloadInterruptedError, RetryPolicy

if TYPE_CHECKING:
    from containerdisks.engine.stores import BlobUpload, Store

__all__ = ["Backoff", "RetryingStore", "is_temporary", "retrying"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Backoff(RetryPolicy):
    """The upstream retry policy (same formula: exponential, capped, jittered, Retry-After
    first), with a slower start for registries and an injectable sleep."""

    base_delay: float = 1.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


def is_temporary(error: BaseException) -> bool:
    if isinstance(error, oci.OCIError):
        return bool(getattr(error, "temporary", False))
    return isinstance(error, DownloadInterruptedError)


async def retrying(
    what: str, operation: Callable[[], Awaitable[_T]], policy: Backoff, *, host: str | None = None
) -> _T:
    """Run `operation` until it succeeds or fails for good; log each retry as one event
    (with the registry `host` when it is one registry's operation)."""
    failures = 0
    while True:
        try:
            return await operation()
        except (oci.OCIError, DownloadInterruptedError) as e:
            failures += 1
            if not is_temporary(e) or failures >= policy.attempts:
                raise
            delay = policy.delay(failures - 1, getattr(e, "retry_after", None))
            log.warning(
                "retry",
                what=what,
                host=host,
                error=str(e),
                attempt=failures,
                delay=round(delay, 2),
            )
            await policy.sleep(delay)


class RetryingStore:
    """A `Store` whose idempotent operations are retried under `policy`.

    Uploads pass through untouched: a broken stream cannot be replayed here; the publisher
    restreams the whole arch instead.
    """

    def __init__(self, store: Store, policy: Backoff) -> None:
        self.inner = store
        self.policy = policy

    @property
    def host(self) -> str:
        return self.inner.host

    def _run(self, what: str, op: Callable[[], Awaitable[_T]]) -> Awaitable[_T]:
        return retrying(f"{what} {self.inner.host}", op, self.policy, host=self.inner.host)

    async def get_manifest(self, repository: str, reference: str) -> oci.Manifest:
        return await self._run(
            f"GET {repository}:{reference}",
            lambda: self.inner.get_manifest(repository, reference),
        )

    async def head_manifest(self, repository: str, reference: str) -> oci.Descriptor | None:
        return await self._run(
            f"HEAD {repository}:{reference}",
            lambda: self.inner.head_manifest(repository, reference),
        )

    async def get_blob(self, repository: str, digest: str, *, max_size: int) -> bytes:
        return await self._run(
            f"GET {repository}@{digest}",
            lambda: self.inner.get_blob(repository, digest, max_size=max_size),
        )

    async def read_blob(
        self, repository: str, digest: str, sink: Callable[[bytes], Awaitable[None]]
    ) -> int:
        # Not retried: the sink has already consumed what arrived.
        return await self.inner.read_blob(repository, digest, sink)

    async def has_blob(self, repository: str, digest: str) -> bool:
        return await self._run(
            f"HEAD {repository}@{digest}", lambda: self.inner.has_blob(repository, digest)
        )

    async def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        return await self.inner.mount_blob(repository, digest, from_repository)

    def blob_upload(self, repository: str) -> BlobUpload:
        return self.inner.blob_upload(repository)

    async def put_blob(self, repository: str, data: bytes) -> oci.Descriptor:
        return await self._run(
            f"PUT blob into {repository}", lambda: self.inner.put_blob(repository, data)
        )

    async def put_manifest(
        self, repository: str, reference: str, media_type: str, data: bytes
    ) -> str:
        return await self._run(
            f"PUT {repository}:{reference}",
            lambda: self.inner.put_manifest(repository, reference, media_type, data),
        )

    async def list_tags(self, repository: str) -> list[str]:
        return await self._run(
            f"GET tags of {repository}", lambda: self.inner.list_tags(repository)
        )

    async def delete_manifest(self, repository: str, digest: str) -> None:
        # Idempotent: a retry after a lost answer finds it gone (the caller takes that as done).
        await self._run(
            f"DELETE {repository}@{digest}",
            lambda: self.inner.delete_manifest(repository, digest),
        )
