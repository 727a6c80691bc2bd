"""The scheduler alone, with an engine double whose syncs the test holds, fails or crashes.

Intervals and backoffs are tens of milliseconds and every wait is bounded, so these run in
about a second in all. What is shown: an entry queued or running is not queued twice; a slow
entry blocks neither the tick loop (heartbeat) nor the other entries; a failing entry backs off
exponentially up to the cap without delaying the others, and passes skip it meanwhile; the queue
is bounded; shutdown lets in-flight syncs finish within the grace, then cancels them and drops
what is queued; `run_once` is one pass, in discovery order, with the results file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from containerdisks.engine.core import Outcome
from containerdisks.engine.plan import ArchPlan, EntryPlan
from containerdisks.engine.scheduler import Scheduler, Timing, result_of
from containerdisks.metrics import Metrics
from containerdisks.settings import ConfigError
from containerdisks.status import Status


@dataclass(frozen=True)
class FakeEntry:
    key: str


class FakeEngine:
    """Discovers `keys`; a sync waits on the key's gate, then fails `failing` keys."""

    def __init__(self, *keys: str) -> None:
        self.keys = list(keys)
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.crashing: set[str] = set()
        self.calls: list[tuple[str, float]] = []
        self.finished: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self.running: Counter[str] = Counter()
        self.overlaps = 0
        self.discover_error: Exception | None = None
        self.undiscoverable: set[str] = set()  # items whose discovery fails (`name:*`)
        self.discovering: dict[str, asyncio.Event] = {}  # slow items: answer when set
        self.passes = 0

    def hold(self, key: str) -> asyncio.Event:
        self.gates[key] = asyncio.Event()
        return self.gates[key]

    async def discover_each(self) -> AsyncGenerator[tuple[int, list[Any], list[Outcome]]]:
        """One item per key, answered in key order; an item in `discovering` answers only when
        its event is set (a slow source)."""
        self.passes += 1
        if self.discover_error is not None:
            raise self.discover_error
        for n in sorted(self.undiscoverable):
            message = f"{n}:*: HTTP 503"
            yield -1, [], [Outcome(EntryPlan(f"{n}:*", [], error=message), [], message)]
        keys = [k for k in self.keys if k.split(":")[0] not in self.undiscoverable]
        slow = [k for k in keys if k in self.discovering]
        for index, key in enumerate(keys):
            if key not in slow:
                yield index, [FakeEntry(key)], []
        for key in slow:
            await self.discovering[key].wait()
            yield keys.index(key), [FakeEntry(key)], []

    async def sync(self, entry: Any) -> Outcome:
        key = entry.key
        self.calls.append((key, time.monotonic()))
        self.running[key] += 1
        if self.running[key] > 1:
            self.overlaps += 1
        try:
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            if key in self.crashing:
                raise RuntimeError("bug")
            row = ArchPlan("x86_64", "aa", "aa", "up-to-date", "", "sha256:1")
            if key in self.failing:
                return Outcome(EntryPlan(key, [row], error=f"{key}: boom"), [], f"{key}: boom")
            return Outcome(EntryPlan(key, [row], published_digest="sha256:top"), [], None)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        finally:
            self.running[key] -= 1
            self.finished[key] += 1

    def count(self, key: str) -> int:
        return sum(1 for k, _ in self.calls if k == key)


def make(
    engine: FakeEngine,
    *,
    interval: float = 0.05,
    workers: int = 1,
    queue_size: int = 8,
    backoff: tuple[float, float] = (0.05, 0.2),
    grace: float = 0.5,
    results: Path | None = None,
    metrics: Metrics | None = None,
) -> Scheduler:
    timing = Timing(
        interval=interval,
        jitter=0.0,
        backoff_initial=backoff[0],
        backoff_max=backoff[1],
        shutdown_grace=grace,
    )
    status = Status(heartbeat_timeout=0.5, dry_run=results is None)
    return Scheduler(
        engine,  # type: ignore[arg-type]
        status,
        Metrics() if metrics is None else metrics,
        timing=timing,
        workers=workers,
        queue_size=queue_size,
        dry_run=results is None,
        results_path=results,
        rand=lambda: 1.0,
    )


async def until(what: str, predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def running(scheduler: Scheduler, body: Callable[[asyncio.Event], Awaitable[None]]) -> float:
    """Run the daemon loop while `body` runs, then stop it; return the seconds the stop took."""
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        await body(stop)
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 10)
    return time.monotonic() - started


async def test_an_entry_queued_or_running_is_not_queued_twice() -> None:
    engine = FakeEngine("a", "b")
    gate = engine.hold("a")
    scheduler = make(engine, workers=2)

    async def body(_: asyncio.Event) -> None:
        await until("five passes", lambda: engine.passes >= 5)
        await until("b synced in later passes", lambda: engine.count("b") >= 3)
        assert 1 == engine.count("a")
        gate.set()
        await until("a again after it finished", lambda: engine.count("a") >= 2)

    await running(scheduler, body)
    assert 0 == engine.overlaps


async def test_a_slow_entry_blocks_neither_the_heartbeat_nor_the_others() -> None:
    engine = FakeEngine("slow", "b", "c")
    engine.hold("slow")
    scheduler = make(engine, workers=2)
    ages: list[float] = []

    async def body(_: asyncio.Event) -> None:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            age = scheduler.status.heartbeat_age()
            if age is not None:
                ages.append(age)
            await asyncio.sleep(0.01)
        assert scheduler.status.alive()

    await running(scheduler, body)
    assert ages
    assert max(ages) < 0.1  # the tick is 12.5 ms here
    assert engine.count("b") >= 4
    assert engine.count("c") >= 4
    assert 1 == engine.count("slow")


async def test_a_failing_entry_backs_off_exponentially_up_to_the_cap() -> None:
    engine = FakeEngine("bad", "good")
    engine.failing.add("bad")
    scheduler = make(engine, interval=60.0, backoff=(0.05, 0.2))

    async def body(_: asyncio.Event) -> None:
        await until("five attempts", lambda: engine.count("bad") >= 5)

    await running(scheduler, body)
    times = [t for k, t in engine.calls if k == "bad"]
    gaps = [b - a for a, b in itertools.pairwise(times)][:4]
    for gap, want in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=True):
        assert want <= gap < want + 0.1, gaps
    # The good entry was synced right after the bad one's first failure, not after its retries.
    assert ["bad", "good", "bad"] == [k for k, _ in engine.calls][:3]
    state = scheduler.status.entries["bad"]
    assert state.failures >= 5
    assert "failed" == state.result
    assert "bad: boom" == state.error
    assert 1 == engine.passes


async def test_passes_skip_an_entry_that_is_backing_off() -> None:
    engine = FakeEngine("bad", "good")
    engine.failing.add("bad")
    scheduler = make(engine, interval=0.02, backoff=(10.0, 10.0))

    async def body(_: asyncio.Event) -> None:
        await until("passes", lambda: engine.count("good") >= 5)
        state = scheduler.status.entries["bad"]
        assert "backoff" == state.step
        assert state.next_poll is not None
        assert state.next_poll > time.time() + 5

    await running(scheduler, body)
    assert 1 == engine.count("bad")


async def test_the_queue_is_bounded_and_feeding_waits_for_room() -> None:
    engine = FakeEngine(*(f"e{i}" for i in range(6)))
    gate = engine.hold("e0")
    scheduler = make(engine, interval=60.0, queue_size=2)
    depths: list[float] = []

    async def body(_: asyncio.Event) -> None:
        await until("e0 running", lambda: engine.count("e0") == 1)
        for _ in range(20):
            depths.append(scheduler.metrics.queue_depth._value.get())
            await asyncio.sleep(0.01)
        assert scheduler.status.alive()
        # e0 runs, two wait in the queue, the pass holds the fourth: the rest are not queued.
        steps = Counter(s.step for s in scheduler.status.entries.values())
        assert {"running": 1, "queued": 3} == dict(steps)
        gate.set()
        await until("all synced", lambda: len({k for k, _ in engine.calls}) == 6)

    await running(scheduler, body)
    assert max(depths) <= 3


async def test_shutdown_cancels_what_is_still_running_after_the_grace() -> None:
    engine = FakeEngine("a", "b")
    engine.hold("a")
    scheduler = make(engine, grace=0.2)

    async def body(_: asyncio.Event) -> None:
        await until("a running and b queued", lambda: engine.count("a") == 1)

    took = await running(scheduler, body)
    assert 0.2 <= took < 1.0
    assert ["a"] == engine.cancelled
    assert 0 == engine.count("b")  # queued, never started
    assert scheduler.status.stopping
    assert not scheduler.status.is_ready()


async def test_shutdown_lets_an_in_flight_sync_finish_within_the_grace() -> None:
    engine = FakeEngine("a")
    gate = engine.hold("a")
    scheduler = make(engine, grace=5.0)

    async def body(stop: asyncio.Event) -> None:
        await until("a running", lambda: engine.count("a") == 1)
        stop.set()
        await asyncio.sleep(0.05)
        gate.set()

    took = await running(scheduler, body)
    assert took < 1.0
    assert [] == engine.cancelled
    assert 1 == engine.finished["a"]
    assert "up-to-date" == scheduler.status.entries["a"].result


async def test_a_crashing_sync_fails_only_its_entry() -> None:
    engine = FakeEngine("a", "b")
    engine.crashing.add("a")
    outcomes = await make(engine).run_once()
    assert ["a", "b"] == [o.key for o in outcomes]
    assert outcomes[0].error is not None
    assert "internal error: RuntimeError: bug" in outcomes[0].error
    assert outcomes[1].error is None


async def test_run_once_is_one_pass_in_discovery_order_with_the_results_file(
    tmp_path: Path,
) -> None:
    engine = FakeEngine("c", "a", "b")
    engine.failing.add("a")
    results = tmp_path / "results.json"
    scheduler = make(engine, workers=3, results=results)
    outcomes = await scheduler.run_once()
    assert ["c", "a", "b"] == [o.key for o in outcomes]
    assert 1 == engine.passes
    assert {"a": {"Stage": "push", "Err": "a: boom"}} == json.loads(results.read_text())
    assert scheduler.status.is_ready()
    assert 1 == scheduler.status.passes


async def test_run_once_drains_a_full_queue_through_every_worker_unexported() -> None:
    """A one-shot pass (as `images push` runs it: metrics not exported, so no prometheus-client)
    over more entries than the queue holds, with more workers than entries in flight: each entry
    is synced exactly once, the pass ends when the queue is closed and drained."""
    keys = [f"e{i}" for i in range(12)]
    engine = FakeEngine(*keys)
    engine.failing.add("e5")
    metrics = Metrics(exported=False)
    scheduler = make(engine, workers=4, queue_size=1, metrics=metrics)
    outcomes = await asyncio.wait_for(scheduler.run_once(), 10)
    assert keys == [o.key for o in outcomes]
    assert dict.fromkeys(keys, 1) == {k: engine.count(k) for k in keys}
    assert ["e5"] == [o.key for o in outcomes if o.error]
    assert not hasattr(metrics, "registry")  # nothing to render: it is never served


async def test_a_slow_item_holds_up_neither_the_others_nor_readiness() -> None:
    engine = FakeEngine("slow:1", "fast:1", "other:1")
    engine.discovering["slow:1"] = asyncio.Event()
    gate = engine.hold("fast:1")
    scheduler = make(engine, interval=60.0)

    async def body(_: asyncio.Event) -> None:
        await until("fast synced", lambda: engine.count("fast:1") == 1)
        # fast:1 discovered but not yet synced: not ready.
        assert not scheduler.status.is_ready()
        gate.set()
        await until("ready", scheduler.status.is_ready)
        assert 0 == scheduler.status.passes  # the first pass still waits for slow:1
        assert 1 == engine.count("other:1")
        assert 0 == engine.count("slow:1")
        engine.discovering["slow:1"].set()
        await until("slow synced", lambda: engine.count("slow:1") == 1)
        await until("first pass", lambda: scheduler.status.passes == 1)

    await running(scheduler, body)


async def test_run_once_reports_in_catalog_order_whatever_answered_first() -> None:
    engine = FakeEngine("a", "b", "c")
    engine.discovering["a"] = asyncio.Event()
    scheduler = make(engine, workers=2)
    task = asyncio.create_task(scheduler.run_once())
    await until("b and c synced", lambda: engine.count("b") == engine.count("c") == 1)
    engine.discovering["a"].set()
    outcomes = await asyncio.wait_for(task, 5)
    assert ["a", "b", "c"] == [o.key for o in outcomes]


async def test_a_first_pass_that_matches_nothing_ends_the_daemon() -> None:
    engine = FakeEngine()
    engine.discover_error = ConfigError("focus 'x:1' matches no catalog entry")
    with pytest.raises(ConfigError):
        await asyncio.wait_for(make(engine).run(asyncio.Event()), 5)


async def test_a_later_discovery_error_is_logged_and_the_daemon_goes_on() -> None:
    engine = FakeEngine("a")
    scheduler = make(engine)

    async def body(_: asyncio.Event) -> None:
        await until("first pass", lambda: scheduler.status.passes >= 1)
        engine.discover_error = RuntimeError("upstream parser bug")
        await until("two more passes", lambda: engine.passes >= 4)
        assert scheduler.status.alive()

    await running(scheduler, body)


async def test_what_upstream_no_longer_lists_is_forgotten() -> None:
    engine = FakeEngine("gone:1", "stays:1")
    engine.failing.add("gone:1")
    scheduler = make(engine, backoff=(10.0, 10.0))

    async def body(_: asyncio.Event) -> None:
        await until("gone failed", lambda: "gone:1" in scheduler.status.entries)
        await until("backing off", lambda: scheduler.status.entries["gone:1"].step == "backoff")
        engine.keys = ["stays:1"]
        await until("forgotten", lambda: "gone:1" not in scheduler.status.entries)

    await running(scheduler, body)
    assert 1 == engine.count("gone:1")
    metrics = scheduler.metrics.render().decode()
    assert 'entry="gone:1"' not in metrics
    assert 'entry="stays:1"' in metrics


async def test_entries_of_an_item_that_failed_to_discover_are_kept_until_it_heals() -> None:
    engine = FakeEngine("fedora:40", "other:1")
    scheduler = make(engine)

    async def body(_: asyncio.Event) -> None:
        await until("first pass", lambda: scheduler.status.passes >= 1)
        engine.undiscoverable.add("fedora")
        await until("the failure", lambda: "fedora:*" in scheduler.status.entries)
        assert "fedora:40" in scheduler.status.entries  # unknown this pass, not gone
        failed = scheduler.status.entries["fedora:*"]
        assert ("failed", "fedora:*: HTTP 503") == (failed.result, failed.error)
        engine.undiscoverable.clear()
        await until("healed", lambda: "fedora:*" not in scheduler.status.entries)
        assert "fedora:40" in scheduler.status.entries

    await running(scheduler, body)


@pytest.mark.parametrize(
    ("error", "tags", "needs", "dry", "expected"),
    [
        ("x", [], False, False, "failed"),
        (None, ["1"], True, False, "published"),
        (None, [], True, True, "pending"),
        (None, [], False, True, "up-to-date"),
    ],
)
def test_result_of(
    error: str | None, tags: list[str], needs: bool, dry: bool, expected: str
) -> None:
    row = ArchPlan("x86_64", "a", "b", "build" if needs else "up-to-date")
    outcome = Outcome(EntryPlan("k", [row], error=error), tags, error)
    assert expected == result_of(outcome, dry)
