"""The daemon's state as the outside sees it: written by the scheduler, read by the HTTP server.

One job: hold liveness (the scheduler's heartbeat), readiness (the first pass completed, or all
it discovered so far is synced and only slow discoveries are left; not shutting down), pass
bookkeeping, and per entry and arch what upstream offers, what is published, the last result
and error, and when the entry is polled next; and render that as JSON.

Decision: a plain object with bookkeeping only, no I/O and no imports of the engine, so that the
scheduler and the server both depend on it and never on each other (an import-linter contract).
Everything runs on one event loop, so there are no locks. Clocks are injected: `monotonic` for
the heartbeat (immune to wall-clock jumps), `wall` for the timestamps people read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["ArchState", "EntryState", "EntryStep", "Status"]

#: Where an entry is in the daemon: waiting in the queue, being synced, done until its next
#: poll, or waiting out a backoff after a failure.
EntryStep = Literal["queued", "running", "idle", "backoff"]


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class ArchState:
    """One arch of one entry, as the last plan (or publish) left it."""

    upstream: str | None = None  # the checksum upstream announces
    published: str | None = None  # the `shasum` label of what is published
    digest: str | None = None  # the published platform manifest
    action: str = ""  # up-to-date, build, reuse, retag, failed
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "published": self.published,
            "digest": self.digest,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class EntryState:
    key: str
    step: EntryStep = "idle"
    #: up-to-date, published, pending (a dry run that would publish), failed; None before the
    #: first sync.
    result: str | None = None
    error: str | None = None
    tags: list[str] = field(default_factory=list)  # written by the last publish
    digest: str | None = None  # what `<name>:<version>` pointed to when last read
    arches: dict[str, ArchState] = field(default_factory=dict)
    failures: int = 0  # consecutive
    last_attempt: float | None = None
    last_success: float | None = None
    next_poll: float | None = None  # wall time; None: with the next pass

    def as_json(self, next_pass: float | None) -> dict[str, Any]:
        return {
            "state": self.step,
            "result": self.result,
            "error": self.error,
            "tags": self.tags,
            "digest": self.digest,
            "failures": self.failures,
            "last_attempt": _iso(self.last_attempt),
            "last_success": _iso(self.last_success),
            "next_poll": _iso(self.next_poll if self.next_poll is not None else next_pass),
            "arches": {arch: a.as_json() for arch, a in self.arches.items()},
        }


@dataclass
class PassState:
    started: float
    finished: float | None = None
    entries: int = 0
    failed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "seconds": None if self.finished is None else round(self.finished - self.started, 3),
            "entries": self.entries,
            "failed": self.failed,
        }


class Status:
    """Liveness, readiness and per-entry state of one daemon."""

    def __init__(
        self,
        *,
        heartbeat_timeout: float,
        dry_run: bool,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.dry_run = dry_run
        self.monotonic = monotonic
        self.wall = wall
        self.started = wall()
        self.heartbeat: float | None = None
        self.passes = 0  # completed
        self.ready = False
        self.stopping = False
        self.next_pass: float | None = None  # wall time
        self.current_pass: PassState | None = None
        self.last_pass: PassState | None = None
        self.entries: dict[str, EntryState] = {}

    # -- written by the scheduler ---------------------------------------------------------------

    def beat(self) -> None:
        self.heartbeat = self.monotonic()

    def entry(self, key: str) -> EntryState:
        state = self.entries.get(key)
        if state is None:
            state = self.entries[key] = EntryState(key)
        return state

    def pass_started(self) -> float:
        """A pass began; returns its start (wall time), to hand back to `pass_finished`."""
        self.current_pass = PassState(self.wall())
        return self.current_pass.started

    def pass_finished(self, started: float, entries: int, failed: int, *, first: bool) -> None:
        """A pass completed. The daemon is ready once the `first` pass has: a later pass can
        complete before it, when the first one still holds all of its entries."""
        done = PassState(started, self.wall(), entries, failed)
        if self.current_pass is not None and self.current_pass.started == started:
            self.current_pass = None
        self.last_pass = done
        self.passes += 1
        self.ready = self.ready or first

    def first_pass_settled(self) -> None:
        """The first pass synced every entry it discovered so far and only items still
        discovering (each under its own deadline) are left: ready, without waiting for them."""
        self.ready = True

    # -- read by the server ----------------------------------------------------------------------

    def alive(self) -> bool:
        """The scheduler loop ticked recently (it does not depend on upstream or registry)."""
        if self.heartbeat is None:
            # Starting up: alive as long as the start is recent.
            return self.wall() - self.started <= self.heartbeat_timeout
        return self.monotonic() - self.heartbeat <= self.heartbeat_timeout

    def is_ready(self) -> bool:
        return self.ready and not self.stopping

    def heartbeat_age(self) -> float | None:
        return None if self.heartbeat is None else self.monotonic() - self.heartbeat

    def as_json(self) -> dict[str, Any]:
        return {
            "ready": self.is_ready(),
            "stopping": self.stopping,
            "dry_run": self.dry_run,
            "started": _iso(self.started),
            "passes": self.passes,
            "current_pass": self.current_pass.as_json() if self.current_pass else None,
            "last_pass": self.last_pass.as_json() if self.last_pass else None,
            "next_pass": _iso(self.next_pass),
            "entries": {
                key: self.entries[key].as_json(self.next_pass) for key in sorted(self.entries)
            },
        }
