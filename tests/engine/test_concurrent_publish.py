"""Two publishers of the same entry at once (a Lease moved while the old holder's publish was in
flight, docs/scaling.md) both succeed and leave a consistent registry: real `images push`
processes racing into one real registry, read back with skopeo.

Every tag both wrote resolves to a complete image (every platform manifest and blob present,
copied byte-exact by skopeo), and the moving and unique tags carry exactly the bytes a single
publish of the same upstream writes into another repository: reproducible digests, manifests
before tags, tags in one order.

Decisions:
- The racers meet at a barrier: a fault proxy in front of the registry holds each one's first
  blob upload until both are waiting, then lets them go together, so their uploads, manifests
  and tags overlap on every run instead of whenever the scheduler happens to start them close.
- The registry's own race, found by looping the racers: distribution's filesystem driver
  rewrites a link file in place (truncate, then write), so a manifest PUT whose check of a
  referenced manifest reads a link the other racer is rewriting gets 400 `DIGEST_INVALID`
  (1 run in ~20). It is temporary (the client retries it); the second test makes it happen on
  every run by emptying the links exactly as a rewrite mid-way leaves them.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

from tests.support.cli import clean_env, command
from tests.support.disks import fedora_tree
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer


def _start(srv: UpstreamServer, target: str, cwd: Path) -> subprocess.Popen[str]:
    cwd.mkdir()
    return subprocess.Popen(
        command(srv, target, "--focus", "fedora:40", cwd=cwd),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=cwd,
    )  # fmt: skip


def _events(stderr: str) -> dict[str, float]:
    """When (wall clock, seconds) each event of a racer's JSON log first happened."""
    seen: dict[str, float] = {}
    for line in stderr.splitlines():
        event = json.loads(line)
        seen.setdefault(event["event"], datetime.fromisoformat(event["timestamp"]).timestamp())
    return seen


def _assert_consistent(registry: Registry, repo: str, copies: Path) -> list[str]:
    """Every tag of `repo` names a complete image that skopeo copies; the timestamp tags carry
    the `<version>` tag's index. Returns the other tags."""
    tags = registry.list_tags(repo)
    assert "40" in tags
    copies.mkdir()
    for tag in tags:
        registry.pull(repo, tag, f"dir:{copies / tag}")
    timestamp = [t for t in tags if t.startswith("40-") and t[3:].isdigit()]
    index = registry.inspect_raw(repo, "40")
    assert [index] * len(timestamp) == [registry.inspect_raw(repo, t) for t in timestamp]
    return sorted(set(tags) - set(timestamp))


def test_two_publishers_of_one_entry_at_once_both_succeed_and_leave_a_consistent_registry(
    tmp_path: Path, registry: Registry
) -> None:
    fedora_tree(tmp_path / "up", versions=("40",))
    with UpstreamServer(tmp_path / "up") as srv, FaultProxy(registry.url) as proxy:
        proxy.add(Rule("POST", r"/v2/race/fedora/blobs/uploads/$", "hold", times=2))
        racing = [_start(srv, f"{proxy.host}/race", tmp_path / f"p{n}") for n in range(2)]
        met = proxy.wait_holding(2, timeout=60)
        proxy.release()
        outputs = [p.communicate(timeout=120) for p in racing]
        assert met, [err[-2000:] for _, err in outputs]
        assert [0, 0] == [p.returncode for p in racing], [err[-3000:] for _, err in outputs]
        single = _start(srv, f"{registry.host}/single", tmp_path / "single")
        _, err = single.communicate(timeout=120)
        assert 0 == single.returncode, err[-2000:]

    # They did race: each one's publish started before the other's ended.
    spans = [_events(err) for _, err in outputs]
    assert all(s["publishing"] < o["published"] for s, o in (spans, spans[::-1])), spans
    stable = _assert_consistent(registry, "race/fedora", tmp_path / "copies")
    assert stable
    expected = [registry.inspect_raw("single/fedora", t) for t in stable]
    assert expected == [registry.inspect_raw("race/fedora", t) for t in stable]


def test_a_link_read_mid_rewrite_by_the_registry_is_retried_not_a_failure(
    tmp_path: Path, registry: Registry
) -> None:
    fedora_tree(tmp_path / "up", versions=("40",))
    revisions = (
        registry.data_dir / "docker/registry/v2/repositories/lone/fedora/_manifests/revisions"
    )
    tag_put = r"/v2/lone/fedora/manifests/(?!sha256:)"
    with UpstreamServer(tmp_path / "up") as srv, FaultProxy(registry.url) as proxy:
        proxy.add(Rule("PUT", tag_put, "hold"))
        pusher = _start(srv, f"{proxy.host}/lone", tmp_path / "p")
        held = proxy.wait_held(60)
        # The platform manifests are stored; their links read as another writer's rewrite
        # leaves them between its truncate and its write: empty.
        links = {p: p.read_bytes() for p in revisions.glob("sha256/*/link")} if held else {}
        for link in links:
            link.write_bytes(b"")
        proxy.release()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e.status == 400 for e in proxy.log):
            time.sleep(0.01)
        for link, text in links.items():
            link.write_bytes(text)
        _, err = pusher.communicate(timeout=120)
        log = proxy.log
    assert held, err[-2000:]
    assert 2 == len(links), links  # x86_64 and aarch64
    assert 0 == pusher.returncode, err[-3000:]
    first = [e.status for e in log if e.method == "PUT" and "/manifests/40-" in e.path][:2]
    assert [400, 201] == first, log
    retries = [e for e in map(json.loads, err.splitlines()) if e["event"] == "retry"]
    assert 1 == len(retries), err[-3000:]
    assert "DIGEST_INVALID" in retries[0]["error"]
    _assert_consistent(registry, "lone/fedora", tmp_path / "copies")
