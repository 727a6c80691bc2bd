"""`Elector` (containerdisks/election.py) round by round: replicas in one process, each with its own
monotonic clock the test moves, talking through the real kubernetes-asyncio client to the FAKE
Lease API (tests/support/fake_leases.py: resourceVersion optimistic concurrency, 409s).

No sleeps: a test calls `round()` where `run` would after each retry period, and moves the
clocks itself. The real-process side (kill, stop/continue, rebalance): tests/daemon/test_leases.py.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from containerdisks.election import Elector, LeaseApi, LeaseTiming, kube_api
from containerdisks.metrics import Metrics
from containerdisks.status import Status
from tests.support.fake_leases import FakeLeases

TIMING = LeaseTiming()  # client-go's: 15 s, 10 s, 2 s
GROUP = "cd"


class Clock:
    """One replica's monotonic clock, moved by the test."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeLeases]:
    with FakeLeases() as api:
        yield api


@pytest.fixture
async def api(fake: FakeLeases, tmp_path: Path) -> AsyncIterator[LeaseApi]:
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    async with kube_api(str(kubeconfig), "default", GROUP, 5.0) as leases:
        yield leases


def _elector(
    api: LeaseApi, identity: str, clock: Clock, *, shards: int = 0, wall: float = 1.8e9
) -> Elector:
    return Elector(
        api,
        name=GROUP,
        identity=identity,
        shards=shards,
        timing=TIMING,
        status=Status(heartbeat_timeout=60, dry_run=False),
        metrics=Metrics(),
        monotonic=clock,
        wall=lambda: wall,
        rand=lambda: 0.0,
    )


class _Cut:
    """A partition between one replica and the API server: every call fails as a dropped
    connection does (the FAKE API itself keeps serving the others)."""

    async def list(self) -> list[dict[str, Any]]:
        raise OSError("connection refused")

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        raise OSError("connection refused")

    async def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        raise OSError("connection refused")


class _Interleaved:
    """The real API, with `between()` run after this replica read and before it writes: the
    other replica's write lands in between, so this one's `resourceVersion` is stale."""

    def __init__(self, api: LeaseApi, between: Callable[[], Any]) -> None:
        self.api = api
        self.between = between

    async def list(self) -> list[dict[str, Any]]:
        return await self.api.list()

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.between()
        return await self.api.create(body)

    async def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        await self.between()
        return await self.api.replace(name, body)


async def test_a_free_lease_is_acquired_and_said_so(api: LeaseApi, fake: FakeLeases) -> None:
    a = _elector(api, "a", Clock(100.0))
    assert not a.active()
    await a.round()
    assert a.holds(0)
    assert a.active()
    assert {GROUP: "a"} == fake.holders()
    lease = fake.leases[("default", GROUP)]
    assert (15, 0) == (lease["spec"]["leaseDurationSeconds"], lease["spec"]["leaseTransitions"])
    assert lease["metadata"]["labels"] == {"containerdisks.kubevirt.io/lease-group": GROUP}
    assert a.status.election is not None
    assert (True, [0]) == (a.status.election["leader"], a.status.election["shards_held"])
    assert 1.0 == a.metrics.registry.get_sample_value("containerdisks_leader")
    assert 1.0 == a.metrics.registry.get_sample_value("containerdisks_shard_held", {"shard": "0"})


async def test_a_held_lease_is_not_taken_before_it_expired_on_the_takers_own_clock(
    api: LeaseApi, fake: FakeLeases
) -> None:
    # a's wall clock says its renewals are decades old; b's monotonic clock is on another scale:
    # neither matters, only how long b itself has seen the record unchanged.
    a_clock, b_clock = Clock(5.0), Clock(1e6)
    a = _elector(api, "a", a_clock, wall=0.0)
    b = _elector(api, "b", b_clock)
    await a.round()
    for _ in range(7):  # 14 s of b's rounds: the record is unchanged, but not for a lease yet
        await b.round()
        assert not b.holds(0)
        b_clock.now += TIMING.retry_period
    assert {GROUP: "a"} == fake.holders()

    a_clock.now += 8.0
    await a.round()  # a renewed just in time: b's count starts over from the change it sees
    await b.round()
    b_clock.now += TIMING.lease_duration - 0.01
    await b.round()
    assert not b.holds(0)
    assert {GROUP: "a"} == fake.holders()
    assert 0 == fake.conflicts


async def test_an_expired_lease_is_taken_over_and_the_transition_counted(
    api: LeaseApi, fake: FakeLeases
) -> None:
    b_clock = Clock(50.0)
    a = _elector(api, "a", Clock(0.0))
    b = _elector(api, "b", b_clock)
    await a.round()
    await b.round()  # b sees a's record first here
    b_clock.now += TIMING.lease_duration
    await b.round()  # a never renewed (killed): the lease ran out as b observed it
    assert b.holds(0)
    assert {GROUP: "b"} == fake.holders()
    assert 1 == fake.leases[("default", GROUP)]["spec"]["leaseTransitions"]

    # A replica that sees a record for the first time counts it as just renewed.
    c_clock = Clock(0.0)
    c = _elector(api, "c", c_clock)
    await c.round()
    c_clock.now += TIMING.lease_duration - 0.01
    await c.round()
    assert not c.holds(0)


async def test_a_holder_that_cannot_renew_stops_starting_work_before_anyone_may_take_over(
    api: LeaseApi, fake: FakeLeases
) -> None:
    clock = Clock(0.0)  # one machine's clock, for a and b alike: the worst case for the margin
    a = _elector(api, "a", clock)
    b = _elector(api, "b", clock)
    await a.round()
    await b.round()
    a.api = _Cut()  # partitioned from the API server from here on; it keeps trying
    gave_up = taken = None
    for step in range(1, 21):  # 20 s in steps of half a retry period
        clock.now = step * TIMING.retry_period / 2
        with pytest.raises(OSError, match="connection refused"):
            await a.round()
        await b.round()
        assert not (a.holds(0) and b.holds(0)), clock.now
        if gave_up is None and not a.holds(0):
            gave_up = clock.now
        if taken is None and b.holds(0):
            taken = clock.now
    assert gave_up == TIMING.renew_deadline  # holds() is false from the renew deadline on
    assert taken is not None
    assert taken >= TIMING.lease_duration
    assert not a.active()
    assert a.status.election is not None
    assert not a.status.election["leader"]
    assert {GROUP: "b"} == fake.holders()


async def test_a_frozen_holder_knows_on_waking_that_it_holds_nothing(api: LeaseApi) -> None:
    clock = Clock(0.0)
    a = _elector(api, "a", clock)
    await a.round()
    clock.now = TIMING.renew_deadline - 0.01
    assert a.holds(0)
    clock.now = TIMING.renew_deadline  # SIGSTOP until here, then SIGCONT: no round ran
    assert not a.holds(0)
    assert [] == a.held_shards()


async def test_a_write_on_a_stale_resource_version_gets_409_and_is_not_the_holder(
    api: LeaseApi, fake: FakeLeases
) -> None:
    clock = Clock(0.0)
    a = _elector(api, "a", clock)
    b = _elector(api, "b", clock)
    await a.round()
    await b.round()
    clock.now += TIMING.lease_duration  # in b's eyes a's lease ran out; a renews in between
    b.api = _Interleaved(api, a.round)
    await b.round()
    assert 1 == fake.conflicts
    assert a.holds(0)
    assert not b.holds(0)
    assert {GROUP: "a"} == fake.holders()

    # Two creating the same Lease: the second gets 409 AlreadyExists.
    c = _elector(api, "c", clock, shards=1)
    d = _elector(_Interleaved(api, c.round), "d", clock, shards=1)
    await d.round()
    assert c.holds(0)
    assert not d.holds(0)
    assert "c" == fake.holders()[f"{GROUP}-shard-0"]


async def test_a_graceful_shutdown_releases_so_a_successor_takes_over_at_once(
    api: LeaseApi, fake: FakeLeases
) -> None:
    clock = Clock(0.0)
    a = _elector(api, "a", clock, shards=2)
    b = _elector(api, "b", clock, shards=2)
    await a.round()
    await b.round()
    assert [0, 1] == a.held_shards()
    await a.release()
    assert [] == a.held_shards()
    assert not a.active()
    for name in (f"{GROUP}-shard-0", f"{GROUP}-shard-1", f"{GROUP}-member-0"):
        spec = fake.leases[("default", name)]["spec"]
        assert ("", 1) == (spec["holderIdentity"], spec["leaseDurationSeconds"]), name
    await b.round()  # at once: no lease duration waited
    assert [0, 1] == b.held_shards()


async def test_shards_are_shared_at_most_ceil_s_over_n_each_as_replicas_come_and_go(
    api: LeaseApi, fake: FakeLeases
) -> None:
    shards = 5
    clock = Clock(0.0)
    replicas: dict[str, Elector] = {}

    async def rounds(n: int = 3) -> None:
        for _ in range(n):
            clock.now += TIMING.retry_period
            for e in replicas.values():
                await e.round()
                exclusive()

    def exclusive() -> None:  # after every single round of any replica
        held = [s for e in replicas.values() for s in e.held_shards()]
        assert len(held) == len(set(held)), {i: e.held_shards() for i, e in replicas.items()}
        owners = {f"{GROUP}-shard-{s}": i for i, e in replicas.items() for s in e.held_shards()}
        holders = fake.holders()
        assert all(holders[name] == i for name, i in owners.items()), (owners, holders)

    def counts() -> dict[str, int]:
        share = math.ceil(shards / len(replicas))
        assert all(len(e.held_shards()) <= share for e in replicas.values())
        return {i: len(e.held_shards()) for i, e in replicas.items()}

    replicas["a"] = _elector(api, "a", clock, shards=shards)
    await rounds(1)
    assert {"a": 5} == counts()
    replicas["b"] = _elector(api, "b", clock, shards=shards)
    await rounds()
    assert {"a": 3, "b": 2} == counts()  # a gave back its highest extras, b took them
    assert [0, 1, 2] == replicas["a"].held_shards()
    replicas["c"] = _elector(api, "c", clock, shards=shards)
    await rounds()
    assert sorted(counts().values()) == [1, 2, 2]
    assert {3} == {e.members for e in replicas.values()}

    replicas.pop("b")  # killed: its member and shard Leases run out on the others' clocks
    for _ in range(math.ceil(TIMING.lease_duration / TIMING.retry_period) + 2):
        await rounds(1)
    assert {2} == {e.members for e in replicas.values()}
    assert [3, 2] == sorted(counts().values(), reverse=True)
    assert set(range(shards)) == {s for e in replicas.values() for s in e.held_shards()}
