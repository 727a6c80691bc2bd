"""The one retry policy: which failures are temporary, how long to wait, how often to try.

Every place that tries again uses this module: the upstream client, the registry stores and
whole arch builds (the engine), the Quay API, the KubeVirt booter, the SSH check and the daemon's
per-entry backoff.

Decisions:
- What is worth a retry is decided by the error itself: an exception whose `temporary` attribute
  is true (`OCIError.temporary`: connection trouble, timeouts, 408/429/5xx; an interrupted
  upstream download; a caller's own transient error). Everything else (a checksum mismatch,
  401/403/404, a bad manifest) fails at once: retrying it only delays the one clear line the
  user needs.
- The temporary statuses and the `Retry-After` parser are `containerdisks.oci`'s (the lowest
  layer, which must import nothing of ours): this module re-exports them as the project's, so
  there is one definition of each.
- The delay is exponential from `base_delay`, capped at `max_delay`, and jittered down by up to
  `jitter` of itself (so retries of many clients spread out and never exceed the cap); a
  `Retry-After` the server sent wins, capped the same way. The random source and the sleep are
  injected, so tests run without waiting.
- Attempts are bounded: `attempts` counts every try, the first included. Loops that poll rather
  than back off (a VM coming up, an SSH login) are bounded the same way by a `Budget`: a number
  of counted tries and a deadline on an injected clock, whichever runs out first.
- Observers (the daemon's metrics) see each retry as a typed `RetryEvent`; they never parse log
  lines. The log line itself stays the caller's: each names its own event and fields.
- A transient failure in the middle of a layer upload is handled by streaming the arch again from
  upstream (resuming or restreaming are both allowed; restreaming needs no replay buffer and keeps
  memory flat, at the price of downloading the arch's bytes again).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog

from containerdisks.oci.errors import TEMPORARY_STATUSES, parse_retry_after

__all__ = [
    "TEMPORARY_STATUSES",
    "Budget",
    "Kind",
    "RetryEvent",
    "RetryPolicy",
    "backoff",
    "is_temporary",
    "log_retry",
    "observing",
    "parse_retry_after",
    "retrying",
    "temporary_status",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

#: Whom a retry asked again: metrics count `upstream` and `registry` retries by host, and
#: `restream` (a whole layer streamed again) on its own.
Kind = Literal["upstream", "registry", "restream", "quay", "kubernetes"]


def temporary_status(status: int | None) -> bool:
    """Whether an HTTP answer with `status` may succeed if the same request is sent later."""
    return status in TEMPORARY_STATUSES


def is_temporary(error: BaseException) -> bool:
    """Whether trying again may help: the error says so with a true `temporary` attribute."""
    return bool(getattr(error, "temporary", False))


def backoff(
    attempt: int,
    *,
    base: float,
    cap: float = math.inf,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before try `attempt + 1` (`attempt` 0: after the first failure): `base` doubled
    per attempt, at most `cap`, times a factor in `(1 - jitter, 1]` drawn from `rand`."""
    delay = min(base * (2.0**attempt), cap)
    if not jitter:
        return delay
    return delay * (1.0 - jitter + jitter * rand())


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try one operation."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: The share of a delay the jitter may take away.
    jitter: float = 0.5
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = random.random

    @classmethod
    def for_registry(cls, attempts: int = 4) -> RetryPolicy:
        """The registries' policy: a slower start than upstream's (a registry that answered
        429 or 503 needs a moment)."""
        return cls(attempts=attempts, base_delay=1.0)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failure number `attempt + 1`; a server's `retry_after` wins."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return backoff(
            attempt, base=self.base_delay, cap=self.max_delay, jitter=self.jitter, rand=self.rand
        )


@dataclass
class Budget:
    """Tries bounded twice: by `attempts` counted tries (None: no bound) and by `deadline` on
    `clock`. Sans-I/O but for `pause`; the caller decides which tries count (`spend`)."""

    deadline: float
    attempts: int | None = None
    clock: Callable[[], float] = time.monotonic
    used: int = 0

    def spend(self) -> None:
        self.used += 1

    @property
    def spent(self) -> bool:
        """Whether the counted tries are used up."""
        return self.attempts is not None and self.used >= self.attempts

    def expired(self) -> bool:
        return self.clock() >= self.deadline

    def left(self) -> float:
        """Seconds until the deadline, never negative."""
        return max(0.0, self.deadline - self.clock())

    async def pause(
        self, seconds: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """Wait `seconds` between tries, never past the deadline."""
        await sleep(min(seconds, self.left()))


@dataclass(frozen=True)
class RetryEvent:
    """One retry, as observers see it: what is tried again, after how many failures, in how
    many seconds, and why; `kind` and `address` (a URL upstream, `host[:port]` of a registry)
    say whom it asks."""

    what: str
    attempt: int
    delay: float
    reason: str
    kind: Kind
    address: str = ""


Observer = Callable[[RetryEvent], None]
_observers: list[Observer] = []


@contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Let `observer` see every retry while the block runs."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def log_retry(event: RetryEvent, error: BaseException) -> None:
    """The engine's line for a retry: event `retry`, with the registry `host` when it is one
    registry's operation."""
    log.warning(
        "retry",
        what=event.what,
        host=event.address or None,
        error=event.reason,
        attempt=event.attempt,
        delay=round(event.delay, 2),
    )


def _notify(event: RetryEvent) -> None:
    for observer in list(_observers):
        observer(event)


async def retrying(
    what: str,
    operation: Callable[[], Awaitable[_T]],
    policy: RetryPolicy,
    *,
    kind: Kind,
    address: str = "",
    on_retry: Callable[[RetryEvent, BaseException], None] = log_retry,
    exhausted: Callable[[BaseException, int], BaseException] | None = None,
) -> _T:
    """Run `operation` until it succeeds or fails for good.

    A temporary failure (see `is_temporary`) is tried again after `policy.delay` (the error's
    `retry_after` seconds honoured) until `policy.attempts` tries are spent; each retry is shown
    to `on_retry` (the caller's log line; the engine's `retry` event unless told) and to the
    observers. Any other error propagates at
    once. When the attempts run out, the last error propagates, or what `exhausted(error,
    attempts)` makes of it (one line saying how often it was tried).
    """
    failures = 0
    while True:
        try:
            return await operation()
        except Exception as e:
            if not is_temporary(e):
                raise
            failures += 1
            if failures >= policy.attempts:
                if exhausted is None:
                    raise
                raise exhausted(e, failures) from None
            delay = policy.delay(failures - 1, getattr(e, "retry_after", None))
            event = RetryEvent(what, failures, delay, str(e), kind, address)
            on_retry(event, e)
            _notify(event)
            await policy.sleep(delay)
