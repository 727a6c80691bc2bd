"""The status's own bookkeeping: what a sync, a plan and a discovery failure leave behind."""

from __future__ import annotations

from containerdisks.engine.plan import ArchPlan as Row
from containerdisks.status import Status


def _status() -> Status:
    now = iter(range(1000, 2000, 10))
    return Status(heartbeat_timeout=10, dry_run=False, wall=lambda: float(next(now)))


def test_a_failed_sync_backs_off_and_a_success_clears_the_next_poll() -> None:
    status = _status()
    status.running("a:1")
    failed = status.synced("a:1", "failed", "a:1: boom", failures=1, retry_in=30, tags=[])
    assert ("backoff", 1050.0, None, 1) == (
        failed.step, failed.next_poll, failed.last_success, failed.failures
    )  # fmt: skip
    ok = status.synced("a:1", "published", None, failures=0, retry_in=None, tags=["1-x"])
    assert ("idle", None, 1030.0, None, ["1-x"]) == (
        ok.step, ok.next_poll, ok.last_success, ok.error, ok.tags
    )  # fmt: skip
    again = status.synced("a:1", "up-to-date", None, failures=0, retry_in=None, tags=[])
    assert ["1-x"] == again.tags  # a sync that wrote no tags keeps the last ones


def test_an_unread_or_failed_arch_keeps_what_was_known_and_a_rebuild_forgets_digests() -> None:
    state = _status().entry("a:1")
    state.planned(
        [Row("x86_64", "u1", "u1", "up-to-date", published_digest="sha256:m1")],
        published_digest="sha256:top",
        rebuilt=False,
    )
    state.planned(
        [Row("x86_64", None, None, "failed", "down")], published_digest=None, rebuilt=False
    )
    arch = state.arches["x86_64"]
    assert ("u1", "u1", "sha256:m1", "failed", "down") == (
        arch.upstream, arch.published, arch.digest, arch.action, arch.reason
    )  # fmt: skip
    assert "sha256:top" == state.digest
    state.planned([Row("x86_64", "u2", "u1", "build")], published_digest="sha256:top", rebuilt=True)
    arch = state.arches["x86_64"]
    assert ("u2", "u2", None) == (arch.upstream, arch.published, arch.digest)
    assert state.as_json(None)["digest"] is None  # read back by the next pass


def test_a_discovery_failure_is_idle_and_failed_and_forget_removes_the_entry() -> None:
    status = _status()
    state = status.discovery_failed("fedora:*", "fedora: releases.json: 503", failures=2)
    assert ("idle", "failed", 1010.0, 2) == (
        state.step, state.result, state.last_attempt, state.failures
    )  # fmt: skip
    status.forget("fedora:*")
    assert {} == status.entries
