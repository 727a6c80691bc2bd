"""The daemon's state as the outside sees it: written by the scheduler, read by the HTTP server.

One job: hold liveness (the scheduler's heartbeat), readiness (the first pass completed, or all
it discovered so far is synced and only slow discoveries are left; not shutting down), pass
bookkeeping, and per entry and arch what upstream offers, what is published, the last result
and error, and when the entry is polled next; and render that as JSON.

Decisions:
- A plain object with bookkeeping only, no I/O and no imports of the engine, so that the
  scheduler and the server both depend on it and never on each other (an import-linter
  contract). It reads a plan's arch rows through the structural `ArchRow`.
- The bookkeeping is its own: the scheduler says what happened (`queued`, `running`, `synced`,
  `discovery_failed`, `forget`, ...) and the status decides which fields that changes and what
  an arch's state becomes (`EntryState.planned`); nothing outside writes its fields.
- Everything runs on one event loop, so there are no locks. Clocks are injected: `monotonic`
  for the heartbeat (immune to wall-clock jumps), `wall` for the timestamps people read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = ["ArchRow", "ArchState", "EntryState", "EntryStep", "Status"]

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


class ArchRow(Protocol):
    """One arch of a plan, as far as the status reads it (the engine's `ArchPlan`)."""

    @property
    def arch(self) -> str: ...
    @property
    def upstream(self) -> str | None: ...
    @property
    def published(self) -> str | None: ...
    @property
    def published_digest(self) -> str | None: ...
    @property
    def action(self) -> str: ...
    @property
    def reason(self) -> str: ...


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

    def planned(
        self, rows: Sequence[ArchRow], *, published_digest: str | None, rebuilt: bool
    ) -> None:
        """What a plan read (and, when `rebuilt`, a publish wrote) for each arch.

        A failed row, or "unchanged since last pass" (nothing was read), keeps what was known.
        After a rebuild the digests are unknown until the next pass reads them back.
        """
        if rebuilt:
            self.digest = None
        elif published_digest is not None:
            self.digest = published_digest
        for row in rows:
            old = self.arches.get(row.arch) or ArchState()
            unread = row.action == "failed" or (
                row.action == "up-to-date" and row.published_digest is None
            )
            arch = ArchState(
                upstream=row.upstream or (old.upstream if unread else None),
                published=old.published if unread else row.published,
                digest=old.digest if unread else row.published_digest,
                action=row.action,
                reason=row.reason,
            )
            if rebuilt and row.action in ("build", "reuse"):
                arch.published, arch.digest = row.upstream, None
            self.arches[row.arch] = arch

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
        self.election: dict[str, Any] | None = None  # `--leader-elect` / `--shards` only

    # -- written by the scheduler ---------------------------------------------------------------

    def beat(self) -> None:
        self.heartbeat = self.monotonic()

    def entry(self, key: str) -> EntryState:
        state = self.entries.get(key)
        if state is None:
            state = self.entries[key] = EntryState(key)
        return state

    def queued(self, key: str) -> None:
        self.entry(key).step = "queued"

    def idle(self, key: str) -> None:
        """Not synced after all (dropped at shutdown, or cancelled)."""
        self.entry(key).step = "idle"

    def running(self, key: str) -> EntryState:
        state = self.entry(key)
        state.step, state.last_attempt = "running", self.wall()
        return state

    def synced(
        self,
        key: str,
        result: str,
        error: str | None,
        *,
        failures: int,
        retry_in: float | None,
        tags: Sequence[str],
    ) -> EntryState:
        """A sync ended: a failure waits `retry_in` seconds in backoff, a success is idle until
        the next pass. Tags are kept from an earlier publish when this one wrote none."""
        state = self.entry(key)
        now = self.wall()
        if error:
            state.step = "backoff"
            state.next_poll = None if retry_in is None else now + retry_in
        else:
            state.step, state.next_poll, state.last_success = "idle", None, now
        state.result, state.error, state.failures = result, error, failures
        if tags:
            state.tags = list(tags)
        return state

    def discovery_failed(self, key: str, error: str | None, *, failures: int) -> EntryState:
        """A catalog item could not list its entries: recorded under its own key (`name:*`)."""
        state = self.entry(key)
        state.step, state.result, state.error = "idle", "failed", error
        state.last_attempt, state.failures = self.wall(), failures
        return state

    def forget(self, key: str) -> None:
        self.entries.pop(key, None)

    def pass_scheduled(self, seconds: float) -> None:
        """The next pass starts in `seconds`."""
        self.next_pass = self.wall() + seconds

    def leases(
        self, *, identity: str, shards: int, held: list[int], leader: bool, members: int | None
    ) -> None:
        """Which Leases this replica holds (election.py says so after each round)."""
        self.election = {
            "identity": identity,
            "leader": leader,
            "shards": shards,
            "shards_held": list(held),
            "members": members,
        }

    def following(self) -> None:
        """A replica that holds no Lease is ready and idle: it serves its probes and waits."""
        self.ready = True

    def shutting_down(self) -> None:
        self.stopping = True

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
            "election": self.election,
            "entries": {
                key: self.entries[key].as_json(self.next_pass) for key in sorted(self.entries)
            },
        }
