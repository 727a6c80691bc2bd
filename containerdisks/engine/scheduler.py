"""The daemon's scheduler: passes on an interval, a bounded queue, workers, backoff, drain.

One job: decide *when* each entry is synced; *how* is `Engine.sync`, the one code path that
`images push` runs too (regsync's `process(action)` behind `server` and `once`).

Shape (kopf's reactor, with anyio's memory object stream as the queue):
- The *tick loop* beats the heartbeat every `tick` seconds, starts a pass when one is due
  (`interval` plus up to `interval_jitter` of it, start to start) and hands entries whose backoff
  ran out to the queue. It awaits nothing but its own sleep, so no upstream, registry or slow
  entry can stall it: `/healthz` reports a stuck loop, never a slow network.
- A *pass* (a task) discovers the catalog item by item (each under its own deadline) and sends
  each item's entries into the bounded queue (`queue_size`) as soon as that item is discovered,
  so a slow source holds up only its own entries: a full queue holds the pass back, not the
  tick loop. A pass whose discovery or
  feeding is still running when the next is due is not doubled. An entry already queued or
  running is not queued twice; an entry waiting out a backoff is skipped. The pass completes when
  its own entries are synced: then the results file is rewritten (not in a dry run); when that
  fails, `results_error` says why (one line) and `images push` exits 1.
- Readiness: the daemon is ready once the first pass completed, or earlier, once at least one
  of its items is discovered and every entry discovered so far is synced: an item still
  discovering (a slow mirror, bounded by `discovery_timeout`) does not hold readiness back.
- Nothing a source or an entry raises ends a pass or the daemon, nor prints a traceback: it is
  one error line (the exception type in it), and the entry or item fails.
- `workers` tasks receive entries and run `Engine.sync`, one entry at a time each.
- A failed entry is tried again after `backoff_initial` seconds, doubled per further failure up to
  `backoff_max`, with up to a quarter taken off as jitter (`containerdisks.retry.backoff`); the
  others go on as scheduled.
- Shutdown: stop ticking, cancel passes, drop what is queued, give in-flight syncs
  `shutdown_grace` seconds, then cancel them (an open upload is cancelled and its temporary files
  removed by the engine's own cleanup, which a plain asyncio cancellation lets run). What the
  interrupted pass did publish (a sync that finished during the drain included) is written to
  the results file, so `images verify` boots it; a pass that published nothing leaves the file.
- `request_pass()` (the daemon's SIGHUP) starts a pass at the next tick, as if it were due; the
  interval counts again from there. A pass still discovering is not doubled (`pass_skipped`).

`once` runs exactly one pass and closes the queue behind it, so the workers drain and stop.
Workers are plain asyncio tasks, not an anyio task group: anyio cancellation is level-triggered
and would cancel the cleanup (the upload's DELETE) too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from containerdisks.catalog import Entry, one_line
from containerdisks.engine.core import Outcome
from containerdisks.engine.plan import EntryPlan
from containerdisks.engine.results import ResultsError, write_results
from containerdisks.metrics import Metrics
from containerdisks.retry import backoff
from containerdisks.settings import ConfigError
from containerdisks.status import Status

__all__ = ["Scheduler", "SyncEngine", "Timing"]

log = structlog.get_logger(__name__)

#: How long cancelled syncs get to clean up (cancel uploads, remove files) before we give up.
_CLEANUP_TIMEOUT = 15.0


class SyncEngine(Protocol):
    """What the scheduler needs of the engine (`containerdisks.engine.core.Engine`)."""

    def discover_each(self) -> AsyncGenerator[tuple[int, list[Entry], list[Outcome]]]: ...

    async def sync(self, entry: Entry) -> Outcome: ...


@dataclass(frozen=True)
class Timing:
    interval: float = 1800.0
    jitter: float = 0.1  # fraction of `interval`
    backoff_initial: float = 60.0
    backoff_max: float = 1800.0
    shutdown_grace: float = 30.0

    @property
    def tick(self) -> float:
        """The tick loop's period: at most a second, finer for very short intervals."""
        return max(0.02, min(1.0, self.interval / 4, self.backoff_initial / 4))


@dataclass
class _Pass:
    """One pass's bookkeeping: the entries it sent, and their outcomes as they come."""

    number: int
    started: float  # monotonic
    started_wall: float = 0.0
    order: list[str] = field(default_factory=list)
    item: dict[str, int] = field(default_factory=dict)  # key -> catalog index, for the order
    pending: set[str] = field(default_factory=set)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    fed: bool = False  # discovery and feeding are over
    answered: int = 0  # items discovered (or failed) so far
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finished(self, outcome: Outcome) -> None:
        self.outcomes[outcome.key] = outcome
        self.pending.discard(outcome.key)
        if self.fed and not self.pending:
            self.done.set()


@dataclass(frozen=True)
class _Job:
    entry: Entry
    run: _Pass | None  # None: a retry after backoff, outside any pass


def result_of(outcome: Outcome, dry_run: bool) -> str:
    """The entry's result for status and metrics: failed, published, pending, up-to-date."""
    if outcome.error:
        return "failed"
    if outcome.tags:
        return "published"
    if dry_run and outcome.plan.needs_publish:
        return "pending"
    return "up-to-date"


class Scheduler:
    """Runs passes over the catalog through `engine`, recording into `status` and `metrics`."""

    def __init__(
        self,
        engine: SyncEngine,
        status: Status,
        metrics: Metrics,
        *,
        timing: Timing,
        workers: int = 1,
        queue_size: int = 64,
        dry_run: bool = True,
        results_path: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.engine = engine
        self.status = status
        self.metrics = metrics
        self.timing = timing
        self.workers = workers
        self.dry_run = dry_run
        self.results_path = results_path
        self.results_error = ""  # why the last pass could not write the results file
        self.monotonic = monotonic
        self.wall = wall
        self.rand = rand
        send, receive = anyio.create_memory_object_stream[_Job](queue_size)
        self._send: MemoryObjectSendStream[_Job] = send
        self._receive: MemoryObjectReceiveStream[_Job] = receive
        self._active: set[str] = set()  # queued or running
        self._running: set[str] = set()
        self._latest: dict[str, Entry] = {}  # as last discovered, for retries after backoff
        self._not_before: dict[str, float] = {}  # monotonic time a failed entry may run again
        self._failures: dict[str, int] = {}
        self._last_outcome: dict[str, Outcome] = {}
        self._passes: list[asyncio.Task[list[Outcome]]] = []
        self._unfinished: dict[int, _Pass] = {}  # passes not yet through `_finish`, by number
        self._wake = asyncio.Event()  # `request_pass()`
        self._feeding: _Pass | None = None
        self._number = 0
        self._stopping = False
        self._fatal: BaseException | None = None

    # -- entry points ---------------------------------------------------------------------------

    async def run_once(self) -> list[Outcome]:
        """Exactly one pass; the queue is closed behind it and the workers drain."""
        workers = self._start_workers()
        try:
            outcomes = await self._pass(first=True)
            self._send.close()
            await asyncio.gather(*workers)
            return outcomes
        except BaseException:
            await self._cancel(workers)
            raise

    def request_pass(self) -> None:
        """Start a pass now (at the next tick) rather than when the interval says."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set; then drain within the grace time and return.

        Raises the `ConfigError` of a first pass whose focus matches nothing.
        """
        workers = self._start_workers()
        next_pass = self.monotonic()
        try:
            while not stop.is_set() and self._fatal is None:
                self.status.beat()
                now = self.monotonic()
                if now >= next_pass or self._wake.is_set():
                    self._wake.clear()
                    self._start_pass(stop)
                    next_pass = now + self.timing.interval * (1 + self.timing.jitter * self.rand())
                    self.status.pass_scheduled(next_pass - now)
                self._feed_retries(now)
                self.metrics.queue_depth.set(self._queued())
                await self._sleep(stop)
        finally:
            await self._shutdown(workers)
        if self._fatal is not None:
            raise self._fatal

    async def _sleep(self, stop: asyncio.Event) -> None:
        """One tick, cut short by `stop` or a requested pass."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=self.timing.tick, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # -- passes ---------------------------------------------------------------------------------

    def _start_pass(self, stop: asyncio.Event) -> None:
        self._passes = [t for t in self._passes if not t.done()]
        if self._feeding is not None:
            log.warning("pass_skipped", reason="the previous pass is still discovering or queueing")
            return
        first = self._number == 0
        task = asyncio.create_task(self._pass(first=first))

        def finished(t: asyncio.Task[list[Outcome]]) -> None:
            error = None if t.cancelled() else t.exception()
            if isinstance(error, ConfigError) and first:
                self._fatal = error
                stop.set()
            elif error is not None:
                log.error("pass_crashed", error=f"{type(error).__name__}: {error}")

        task.add_done_callback(finished)
        self._passes.append(task)

    async def _pass(self, *, first: bool) -> list[Outcome]:
        self._number += 1
        run = _Pass(self._number, self.monotonic())
        self._unfinished[run.number] = run
        self._feeding = run
        run.started_wall = self.status.pass_started()
        log.info("pass_started", number=run.number)
        entries: list[Entry] = []
        failures: list[Outcome] = []
        try:
            try:
                async with contextlib.aclosing(self.engine.discover_each()) as found:
                    async for index, new, failed in found:
                        entries += new
                        failures += failed
                        run.answered += 1
                        run.item.update(
                            (k, index) for k in [*(e.key for e in new), *(f.key for f in failed)]
                        )
                        await self._feed(run, new, failed)
                        self._settle(run)
                self._reconcile(entries, failures)
            except ConfigError as e:
                if first:
                    raise
                log.error("pass_failed", number=run.number, error=str(e))
            except Exception as e:
                # A bug in discovery must not end the daemon: the next pass tries again.
                log.error(
                    "pass_failed", number=run.number, error=one_line(f"{type(e).__name__}: {e}")
                )
            log.info(
                "discovered",
                number=run.number,
                entries=len(entries),
                failed=len(failures),
                seconds=round(self.monotonic() - run.started, 3),
            )
        finally:
            run.fed = True
            if self._feeding is run:
                self._feeding = None
        if run.pending:
            await run.done.wait()
        return self._finish(run)

    async def _feed(self, run: _Pass, entries: list[Entry], failures: list[Outcome]) -> None:
        """Record one item's discovery failures and queue its entries."""
        for failure in failures:
            self._record_failure_outcome(failure)
            run.order.append(failure.key)
            run.outcomes[failure.key] = failure
        now = self.monotonic()
        for entry in entries:
            key = entry.key
            self._latest[key] = entry
            if key in self._active:
                log.info("skipped", entry=key, reason="already queued or running")
                continue
            if self._not_before.get(key, 0.0) > now:
                log.info("skipped", entry=key, reason="backing off after a failure")
                if key in self._last_outcome:
                    run.order.append(key)
                    run.outcomes[key] = self._last_outcome[key]
                continue
            run.order.append(key)
            run.pending.add(key)
            self._mark_queued(key)
            await self._send.send(_Job(entry, run))
            self.metrics.queue_depth.set(self._queued())

    def _settle(self, run: _Pass) -> None:
        """Ready early: the first pass synced all it discovered, only slow items are left."""
        if run.number == 1 and run.answered and not run.pending:
            self.status.first_pass_settled()

    def _ordered(self, run: _Pass) -> list[Outcome]:
        # Items are discovered concurrently: report them in catalog order, whatever came first.
        order = sorted(run.order, key=lambda k: run.item.get(k, -1))
        return [run.outcomes[k] for k in order if k in run.outcomes]

    def _write_results(self, outcomes: list[Outcome]) -> None:
        if self.results_path is None:
            return
        results = {o.key: r for o in outcomes if (r := o.result) is not None}
        try:
            write_results(self.results_path, results)
        except ResultsError as e:
            self.results_error = str(e)
            log.error("results_not_written", path=str(self.results_path), error=str(e))
        else:
            self.results_error = ""

    def _finish(self, run: _Pass) -> list[Outcome]:
        self._unfinished.pop(run.number, None)
        outcomes = self._ordered(run)
        failed = [o.key for o in outcomes if o.error]
        seconds = self.monotonic() - run.started
        self._write_results(outcomes)
        self.status.pass_finished(
            run.started_wall, len(outcomes), len(failed), first=run.number == 1
        )
        self.metrics.pass_finished(seconds, self.wall())
        log.info(
            "pass_finished",
            number=run.number,
            seconds=round(seconds, 3),
            entries=len(outcomes),
            failed=len(failed),
            published=sum(1 for o in outcomes if o.tags),
        )
        return outcomes

    def _feed_retries(self, now: float) -> None:
        """Queue the failed entries whose backoff ran out, as far as the queue has room."""
        for key, when in sorted(self._not_before.items(), key=lambda kv: kv[1]):
            if when > now or key in self._active or key not in self._latest:
                continue
            try:
                self._send.send_nowait(_Job(self._latest[key], None))
            except anyio.WouldBlock:
                return
            self._mark_queued(key)
            log.info("retrying", entry=key, failures=self._failures.get(key, 0))

    # -- workers --------------------------------------------------------------------------------

    def _start_workers(self) -> list[asyncio.Task[None]]:
        tasks = []
        with self._receive:
            for n in range(self.workers):
                tasks.append(asyncio.create_task(self._worker(self._receive.clone(), n)))
        return tasks

    async def _worker(self, receive: MemoryObjectReceiveStream[_Job], n: int) -> None:
        async with receive:
            async for job in receive:
                self.metrics.queue_depth.set(self._queued())
                if self._stopping:
                    self._active.discard(job.entry.key)
                    self.status.idle(job.entry.key)
                    continue
                await self._process(job)

    async def _process(self, job: _Job) -> None:
        entry = job.entry
        key = entry.key
        self.status.running(key)
        self._running.add(key)
        self.metrics.in_flight.inc()
        started = self.monotonic()
        outcome: Outcome | None = None
        try:
            try:
                outcome = await self.engine.sync(entry)
            except Exception as e:
                # A bug or an unexpected OS error fails this entry only: one line, no traceback.
                message = one_line(f"{key}: internal error: {type(e).__name__}: {e}")
                log.error("sync_crashed", entry=key, error=message)
                outcome = Outcome(EntryPlan(key, [], error=message), [], message)
        finally:
            self._running.discard(key)
            self._active.discard(key)
            self.metrics.in_flight.dec()
            if outcome is None:  # cancelled
                self.status.idle(key)
        assert outcome is not None
        self._record(outcome, self.monotonic() - started)
        if job.run is not None:
            job.run.finished(outcome)
            self._settle(job.run)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _queued(self) -> int:
        return len(self._active) - len(self._running)

    def _mark_queued(self, key: str) -> None:
        self._active.add(key)
        self.status.queued(key)

    def _backoff(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        return backoff(
            failures - 1,
            base=self.timing.backoff_initial,
            cap=self.timing.backoff_max,
            jitter=0.25,
            rand=self.rand,
        )

    def _record(self, outcome: Outcome, seconds: float) -> None:
        key = outcome.key
        result = result_of(outcome, self.dry_run)
        now_wall = self.wall()
        self._last_outcome[key] = outcome
        delay: float | None = None
        if outcome.error:
            self._failures[key] = self._failures.get(key, 0) + 1
            delay = self._backoff(key)
            self._not_before[key] = self.monotonic() + delay
            log.warning(
                "synced",
                entry=key,
                result=result,
                error=outcome.error,
                seconds=round(seconds, 3),
                failures=self._failures[key],
                retry_in=round(delay, 1),
            )
        else:
            self._failures.pop(key, None)
            self._not_before.pop(key, None)
            log.info(
                "synced", entry=key, result=result, seconds=round(seconds, 3), tags=outcome.tags
            )
        state = self.status.synced(
            key,
            result,
            outcome.error,
            failures=self._failures.get(key, 0),
            retry_in=delay,
            tags=outcome.tags,
        )
        self._record_arches(outcome, result)
        self.metrics.sync_finished(key, result, seconds, now_wall, state.failures)

    def _record_arches(self, outcome: Outcome, result: str) -> None:
        plan = outcome.plan
        rebuilt = result == "published" and any(r.action in ("build", "reuse") for r in plan.arches)
        self.status.entry(outcome.key).planned(
            plan.arches, published_digest=plan.published_digest, rebuilt=rebuilt
        )

    def _reconcile(self, entries: list[Entry], failures: list[Outcome]) -> None:
        """Forget what upstream no longer lists (a Fedora release gone, a discovery failure
        healed), so that nothing is retried or shown for ever. An item that failed to discover
        this pass keeps its entries: they are unknown, not gone."""
        current = {e.key for e in entries} | {f.key for f in failures}
        unknown = {f.key.split(":", 1)[0] for f in failures}
        for key in sorted(set(self.status.entries) | set(self._latest)):
            if key in current or key in self._active or key.split(":", 1)[0] in unknown:
                continue
            log.info("forgotten", entry=key, reason="no longer discovered")
            self._latest.pop(key, None)
            self._not_before.pop(key, None)
            self._failures.pop(key, None)
            self._last_outcome.pop(key, None)
            self.status.forget(key)
            self.metrics.forget(key)

    def _record_failure_outcome(self, outcome: Outcome) -> None:
        """A catalog item whose discovery failed: recorded under its key (`name:*`)."""
        self._failures[outcome.key] = self._failures.get(outcome.key, 0) + 1
        state = self.status.discovery_failed(
            outcome.key, outcome.error, failures=self._failures[outcome.key]
        )
        self._record_arches(outcome, "failed")
        self.metrics.discovery_failures.inc()
        self.metrics.last_result.labels(outcome.key).state("failed")
        self.metrics.failures.labels(outcome.key).set(state.failures)

    # -- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        self.status.shutting_down()
        in_flight = sorted(self._running)
        log.info(
            "shutdown_started",
            in_flight=in_flight,
            queued=self._queued(),
            grace=self.timing.shutdown_grace,
        )
        for task in self._passes:
            task.cancel()
        await asyncio.gather(*self._passes, return_exceptions=True)
        self._send.close()
        if workers:
            _, pending = await asyncio.wait(workers, timeout=self.timing.shutdown_grace)
            if pending:
                log.warning("shutdown_cancelling", entries=sorted(self._running))
                await self._cancel(list(pending))
        self._record_interrupted()
        log.info("shutdown_finished")

    def _record_interrupted(self) -> None:
        """The results of passes the shutdown cut short, when they published anything (a sync
        that finished in the drain included): verify must find what is in the registry."""
        for _, run in sorted(self._unfinished.items()):
            outcomes = self._ordered(run)
            if any(o.result is not None and o.tags for o in outcomes):
                self._write_results(outcomes)
                log.info(
                    "results_written_at_shutdown",
                    number=run.number,
                    entries=[o.key for o in outcomes if o.result is not None],
                )
        self._unfinished.clear()

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_CLEANUP_TIMEOUT)
            if pending:
                log.error("cleanup_timed_out", seconds=_CLEANUP_TIMEOUT)
