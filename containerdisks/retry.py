"""Retrying what failed for a reason that may pass: bounded, with backoff, jitter, Retry-After.

One policy for the registry layer's store operations (`registry.stores.RetryingStore`) and for
whole arch builds. What is worth a retry is decided by the error itself: `OCIError.temporary`
(connection trouble, timeouts, 408/429/5xx) and an interrupted upstream download. Everything
else (a checksum mismatch, 401/403/404, a bad manifest) fails at once: retrying it only delays
the one clear line the user needs.

A transient failure in the middle of a layer upload is handled by streaming the arch again from
upstream (DESIGN.md allows resuming or restreaming; restreaming needs no replay buffer and keeps
memory flat, at the price of downloading the arch's bytes again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from containerdisks import oci
from containerdisks.upstream import DownloadInterruptedError, RetryPolicy

__all__ = ["Backoff", "is_temporary", "retrying"]

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
