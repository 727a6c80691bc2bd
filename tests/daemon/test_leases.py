"""`serve --leader-elect` and `--shards`: real `serve` processes, a real registry and a loopback
upstream, Leases on the FAKE Kubernetes API (tests/support/fake_leases.py).

- The fake has the real API's semantics: 409 AlreadyExists, 409 Conflict on a stale
  `resourceVersion`, and `kubectl get lease -o yaml` reads what the replicas wrote.
- SIGKILL the leader: the other replica takes the Lease within lease duration + retry period and
  publishes what changed upstream; SIGTERM: the Lease is released and taken at once.
- SIGSTOP the leader for longer than the lease, then SIGCONT: it starts nothing more, the
  successor publishes, and the fake's history shows no two holders of one Lease at once.
- 3 replicas, 12 shards: a kill and a join rebalance to at most ceil(S/N) each within two lease
  durations, and `/status` and `/metrics` say which shards each holds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon.conftest import Daemon, Fedora, StartDaemon
from tests.support.disks import make_qcow2, replace_fedora_image
from tests.support.fake_leases import FakeLeases
from tests.support.registry import Registry

LEASE, RENEW, RETRY = 3.0, 2.0, 0.5
#: Process scheduling on a loaded 2-core machine, on top of what the protocol allows.
SLACK = 2.0


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeLeases]:
    with FakeLeases() as api:
        yield api


def _request(url: str, method: str, body: dict[str, Any] | None, token: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_fake_serves_leases_with_the_real_apis_concurrency_and_kubectl_reads_them(
    fake: FakeLeases, tmp_path: Path
) -> None:
    base = f"{fake.url}/apis/coordination.k8s.io/v1/namespaces/default/leases"
    spec = {"holderIdentity": "a", "leaseDurationSeconds": 3}
    lease = {"metadata": {"name": "one"}, "spec": spec}
    code, created = _request(base, "POST", lease, fake.token)
    assert 201 == code
    code, again = _request(base, "POST", lease, fake.token)
    assert (409, "AlreadyExists") == (code, again["reason"])
    version = created["metadata"]["resourceVersion"]
    update = {"metadata": {"name": "one", "resourceVersion": version},
              "spec": {"holderIdentity": "b", "leaseDurationSeconds": 3}}  # fmt: skip
    code, updated = _request(f"{base}/one", "PUT", update, fake.token)
    assert 200 == code
    assert version != updated["metadata"]["resourceVersion"]
    code, stale = _request(f"{base}/one", "PUT", update, fake.token)  # the old version again
    assert (409, "Conflict") == (code, stale["reason"])
    assert 404 == _request(f"{base}/two", "GET", None, fake.token)[0]

    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    shown = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "-n", "default", "get", "lease", "one",
         "-o", "yaml"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert 0 == shown.returncode, shown.stderr
    read = yaml.safe_load(shown.stdout)
    assert ("Lease", "b") == (read["kind"], read["spec"]["holderIdentity"])
    assert [("a", 1), ("b", 2)] == [(w.holder, w.version) for w in fake.history]


def _replica(
    start_daemon: StartDaemon,
    fedora: Fedora,
    registry: Registry,
    fake: FakeLeases,
    tmp_path: Path,
    n: int,
    *flags: str,
) -> Daemon:
    srv, _, _ = fedora
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    return start_daemon(
        srv,
        f"{registry.host}/cd",
        "--work-dir", str(tmp_path / f"work-{n}"),
        "--kubeconfig", str(kubeconfig),
        "--lease-namespace", "default",
        "--lease-duration", str(LEASE),
        "--lease-renew-deadline", str(RENEW),
        "--lease-retry-period", str(RETRY),
        *flags,
    )  # fmt: skip


def _election(d: Daemon) -> dict[str, Any]:
    """`/status`'s election part; before the server answers, nothing held."""
    code, body = d.get("/status")
    election: dict[str, Any] | None = json.loads(body)["election"] if code == 200 else None
    return election or {"leader": False, "shards_held": [], "identity": None}


def _leader(daemons: list[Daemon], timeout: float = 60) -> Daemon:
    found: list[Daemon] = []

    def one() -> bool:
        found[:] = [d for d in daemons if _election(d)["leader"]]
        return len(found) == 1

    daemons[0].wait_for("one leader", one, timeout)
    return found[0]


def _elected_pair(
    start_daemon: StartDaemon, fedora: Fedora, registry: Registry, fake: FakeLeases, tmp_path: Path
) -> tuple[Daemon, Daemon]:
    """Two `--leader-elect` replicas, once one of them leads: (the leader, the other)."""
    replicas = [
        _replica(start_daemon, fedora, registry, fake, tmp_path, n, "--leader-elect=true")
        for n in range(2)
    ]
    leader = _leader(replicas)
    return leader, next(d for d in replicas if d is not leader)


def _first_pass(d: Daemon) -> None:
    d.wait_for("the first pass", lambda: bool(d.events("pass_finished")), 60)


def _published(registry: Registry, version: str) -> str:
    raw = registry.inspect_raw("cd/fedora", version)
    return raw.decode()


def _change_upstream(root: Path, seed: str) -> None:
    replace_fedora_image(root, "40", "x86_64", make_qcow2(root / f"{seed}.qcow2", seed))


def test_a_killed_leader_is_succeeded_within_lease_plus_retry_and_the_successor_publishes(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon, fake: FakeLeases,
    tmp_path: Path,
) -> None:  # fmt: skip
    _, _, root = fedora_upstream
    leader, follower = _elected_pair(start_daemon, fedora_upstream, registry, fake, tmp_path)
    _first_pass(leader)
    follower.ready()  # followers are ready, and idle
    assert [] == follower.events("pass_started")
    assert 0 == follower.metrics()[("containerdisks_leader", ())]
    assert 1 == leader.metrics()[("containerdisks_leader", ())]

    before = _published(registry, "40")
    _change_upstream(root, "changed-after-kill")
    leader.signal(signal.SIGKILL)
    killed = time.monotonic()
    leader.wait(10)
    taken = follower.wait_for(
        "the follower to take the Lease", lambda: bool(follower.events("lease_acquired")), 30
    )
    assert taken <= LEASE + RETRY + SLACK, f"took {taken:.2f}s"
    follower.wait_for(
        "the follower to publish the change",
        lambda: any(e.get("result") == "published" for e in follower.events("synced")),
        60,
    )
    assert before != _published(registry, "40")
    assert [] == fake.overlaps()
    assert time.monotonic() - killed < 60


def test_a_graceful_shutdown_releases_the_lease_and_the_successor_takes_it_at_once(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon, fake: FakeLeases,
    tmp_path: Path,
) -> None:  # fmt: skip
    leader, follower = _elected_pair(start_daemon, fedora_upstream, registry, fake, tmp_path)
    _first_pass(leader)
    leader.signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert 0 == leader.wait(30)
    assert "" in [w.holder for w in fake.history], "the Lease was not released"
    follower.wait_for(
        "the follower to take the Lease", lambda: bool(follower.events("lease_acquired")), 30
    )
    # Released: taken on the successor's next round, not after a lease duration.
    assert time.monotonic() - stopped < LEASE
    assert [] == fake.overlaps()


def test_a_leader_stopped_longer_than_its_lease_starts_nothing_when_continued(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon, fake: FakeLeases,
    tmp_path: Path,
) -> None:  # fmt: skip
    _, _, root = fedora_upstream
    leader, successor = _elected_pair(start_daemon, fedora_upstream, registry, fake, tmp_path)
    leader.ready()
    leader.wait_for("a pass after the first", lambda: len(leader.events("pass_finished")) >= 2)
    leader.signal(signal.SIGSTOP)
    try:
        _change_upstream(root, "changed-in-partition")
        successor.wait_for(
            "the successor to publish",
            lambda: any(e.get("result") == "published" for e in successor.events("synced")),
            60,
        )
        time.sleep(LEASE)  # the stopped leader's lease is long gone
        worked = len(leader.events("pass_started")) + len(leader.events("synced"))
    finally:
        leader.signal(signal.SIGCONT)
    leader.wait_for("the continued leader to see it lost", lambda: not _election(leader)["leader"])
    leader.wait_for("a few rounds", lambda: bool(leader.events("lease_lost")), 10)
    time.sleep(4 * RETRY + 1.0)  # its tick loop runs with an interval of 1 s
    assert worked == len(leader.events("pass_started")) + len(leader.events("synced"))
    assert _election(successor)["leader"]
    assert [] == fake.overlaps()
    assert fake.conflicts >= 0


def _held(d: Daemon) -> list[int]:
    held: list[int] = _election(d)["shards_held"]
    return held


def _balanced(fake: FakeLeases, daemons: list[Daemon], shards: int) -> bool:
    """Every shard held by a live replica, none by more than ceil(S/N), as the fake and each
    replica's `/status` say."""
    cap = -(-shards // len(daemons))
    identities = {_election(d)["identity"]: d for d in daemons}
    holders = {k: v for k, v in fake.holders().items() if "-shard-" in k}
    if len(holders) != shards or set(holders.values()) - set(identities):
        return False
    for identity, d in identities.items():
        mine = sorted(int(k.rsplit("-", 1)[1]) for k, v in holders.items() if v == identity)
        if len(mine) > cap or mine != _held(d):
            return False
    return True


def test_three_replicas_share_twelve_shards_and_rebalance_after_a_kill_and_a_join(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon, fake: FakeLeases,
    tmp_path: Path,
) -> None:  # fmt: skip
    shards = 12
    replicas = [
        _replica(start_daemon, fedora_upstream, registry, fake, tmp_path, n, "--shards", "12")
        for n in range(3)
    ]
    for d in replicas:
        d.ready()
    replicas[0].wait_for("4 shards each", lambda: _balanced(fake, replicas, shards), 60)
    held = replicas[0].metrics()
    assert 4 == sum(v for (name, _), v in held.items() if name == "containerdisks_shard_held")

    replicas[2].signal(signal.SIGKILL)
    replicas[2].wait(10)
    live = replicas[:2]
    took = live[0].wait_for("6 shards each", lambda: _balanced(fake, live, shards), 30)
    assert took <= 2 * LEASE + SLACK, f"took {took:.2f}s"

    joined = _replica(start_daemon, fedora_upstream, registry, fake, tmp_path, 3, "--shards", "12")
    joined.ready()
    live = [*live, joined]
    took = live[0].wait_for("4 shards each again", lambda: _balanced(fake, live, shards), 30)
    assert took <= 2 * LEASE + SLACK, f"took {took:.2f}s"
    assert [] == fake.overlaps()
