"""The daemon's state as the outside sees it: written by the scheduler, read by the HTTP server.

One job: hold liveness (the scheduler's heartbeat), readiness (the first pass completed, or all
it discovered so far is synced and only slow discoveries are left; not shutting down), pass
bookkeeping (and the last `HISTORY` passes), and per entry and arch what upstream offers, what
is published, the last result and outcome and why, since when upstream is ahead of what is
published, when that last changed, when the entry is polled next, and its last `HISTORY` syncs;
and render that as JSON (`/status`; the page at `/` is rendered from the very same dict).

Decisions:
- A plain object with bookkeeping only, no I/O and no imports of the engine, so that the
  scheduler and the server both depend on it and never on each other (an import-linter
  contract). It reads a plan's arch rows through the structural `ArchRow`.
- The bookkeeping is its own: the scheduler says what happened (`queued`, `running`, `synced`,
  `discovery_failed`, `forget`, ...) and the status decides which fields that changes and what
  an arch's state becomes (`EntryState.planned`); nothing outside writes its fields.
- An arch's `outcome` uses the names `images push` reports (`published`, `reused`,
  `up-to-date`, `failed`; in a dry run the planned action); its `changed` moves when what
  upstream offers, what is published, or whether it fails changes, not on every pass.
- Histories are bounded (`HISTORY` items per entry and for the passes): a daemon running for
  months holds no more than one running for minutes.
- Everything runs on one event loop, so there are no locks. Clocks are injected: `monotonic`
  for the heartbeat (immune to wall-clock jumps), `wall` for the timestamps people read.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = ["HISTORY", "ArchRow", "ArchState", "EntryState", "EntryStep", "Status", "iso_now"]

#: Where an entry is in the daemon: waiting in the queue, being synced, done until its next
#: poll, or waiting out a backoff after a failure.
EntryStep = Literal["queued", "running", "idle", "backoff"]
#: How many passes, and syncs per entry, the status remembers.
HISTORY = 10
#: An arch's outcome after a publish, by its planned action.
_DONE = {"build": "published", "reuse": "reused", "retag": "reused", "up-to-date": "up-to-date"}


def _outcome(action: str, result: str | None, error: str | None) -> str:
    """What became of one arch, in `images push`'s words, from its action and the entry's
    result (a dry run's `pending` keeps the planned action)."""
    if action == "failed" or (error and action != "up-to-date"):
        return "failed"
    if result == "pending":
        return action
    if result == "published":
        return _DONE.get(action, action)
    return "up-to-date"


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_now(when: float) -> str:
    """`when` (Unix time) as the status writes times: ISO 8601, seconds, UTC, `Z`."""
    return _iso(when) or ""


@dataclass
class ArchState:
    """One arch of one entry, as the last plan (or publish) left it."""

    upstream: str | None = None  # the checksum upstream announces
    published: str | None = None  # the `shasum` label of what is published
    digest: str | None = None  # the published platform manifest
    action: str = ""  # up-to-date, build, reuse, retag, failed
    reason: str = ""
    outcome: str = ""  # published, reused, up-to-date, failed (dry run: the action)
    changed: float | None = None  # upstream, published or failing last changed (wall time)
    behind_since: float | None = None  # upstream first seen ahead of what is published

    def as_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "published": self.published,
            "digest": self.digest,
            "action": self.action,
            "outcome": self.outcome,
            "reason": self.reason,
            "changed": _iso(self.changed),
            "behind_since": _iso(self.behind_since),
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
    changed: float | None = None  # when the result last changed
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def record(self, when: float, result: str, error: str | None) -> None:
        """One sync (or discovery) ended: the result, and the history, newest last."""
        if result != self.result:
            self.changed = when
        self.result, self.error = result, error
        self.history.append({"at": _iso(when), "result": result, "error": error})

    def planned(
        self,
        rows: Sequence[ArchRow],
        *,
        published_digest: str | None,
        rebuilt: bool,
        now: float | None = None,
    ) -> None:
        """What a plan read (and, when `rebuilt`, a publish wrote) for each arch, and what
        became of it (`_outcome`, from the result `record` set).

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
            arch.outcome = _outcome(row.action, self.result, self.error)
            failing = arch.outcome == "failed"
            same = (old.upstream, old.published, old.outcome == "failed") == (
                arch.upstream, arch.published, failing
            )  # fmt: skip
            arch.changed = old.changed if same and row.arch in self.arches else now
            behind = arch.upstream is not None and arch.upstream != arch.published
            arch.behind_since = (old.behind_since or now) if behind else None
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
            "changed": _iso(self.changed),
            "arches": {arch: a.as_json() for arch, a in self.arches.items()},
            "history": list(self.history),
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
        interval: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.dry_run = dry_run
        self.interval = interval  # seconds between passes; None: one pass only
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
        self.recent_passes: deque[PassState] = deque(maxlen=HISTORY)
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
        state.record(now, result, error)
        state.failures = failures
        if tags:
            state.tags = list(tags)
        return state

    def discovery_failed(self, key: str, error: str | None, *, failures: int) -> EntryState:
        """A catalog item could not list its entries: recorded under its own key (`name:*`)."""
        state = self.entry(key)
        state.step, state.last_attempt, state.failures = "idle", self.wall(), failures
        state.record(state.last_attempt, "failed", error)
        return state

    def planned(
        self,
        key: str,
        rows: Sequence[ArchRow],
        *,
        published_digest: str | None,
        rebuilt: bool,
    ) -> EntryState:
        """The arches of a sync that `synced` (or `discovery_failed`) recorded: see
        `EntryState.planned`."""
        state = self.entry(key)
        state.planned(rows, published_digest=published_digest, rebuilt=rebuilt, now=self.wall())
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
        self.recent_passes.append(done)
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
            "interval": self.interval,
            "recent_passes": [p.as_json() for p in reversed(self.recent_passes)],
            "election": self.election,
            "entries": {
                key: self.entries[key].as_json(self.next_pass) for key in sorted(self.entries)
            },
        }
