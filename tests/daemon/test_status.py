"""The status's own bookkeeping: what a sync, a plan and a discovery failure leave behind."""

from __future__ import annotations

from containerdisks.engine.plan import ArchPlan as Row
from containerdisks.status import HISTORY, Status


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


def test_outcomes_use_push_words_and_changed_moves_only_when_something_did() -> None:
    status = _status()
    status.synced("a:1", "published", None, failures=0, retry_in=None, tags=["1"])
    rows = [Row("x86_64", "u2", "u1", "build"), Row("aarch64", "v", "v", "retag")]
    state = status.planned("a:1", rows, published_digest="sha256:top", rebuilt=True)
    x86, arm = state.arches["x86_64"], state.arches["aarch64"]
    assert ("published", "reused") == (x86.outcome, arm.outcome)
    assert (1020.0, None) == (x86.changed, x86.behind_since)  # published: upstream caught up
    status.synced("a:1", "up-to-date", None, failures=0, retry_in=None, tags=[])
    rows = [Row("x86_64", "u2", "u2", "up-to-date", published_digest="sha256:m")]
    state = status.planned("a:1", rows, published_digest="sha256:top", rebuilt=False)
    assert ("up-to-date", 1020.0) == (
        state.arches["x86_64"].outcome,
        state.arches["x86_64"].changed,
    )
    # Upstream moves on and the build fails: failed, changed, and behind since then.
    status.synced("a:1", "failed", "a:1: boom", failures=1, retry_in=5, tags=[])
    rows = [Row("x86_64", "u3", "u2", "build")]
    state = status.planned("a:1", rows, published_digest="sha256:top", rebuilt=False)
    x86 = state.arches["x86_64"]
    assert ("failed", 1060.0, 1060.0) == (x86.outcome, x86.changed, x86.behind_since)
    status.synced("a:1", "failed", "a:1: boom", failures=2, retry_in=5, tags=[])
    state = status.planned("a:1", rows, published_digest="sha256:top", rebuilt=False)
    assert (1060.0, 1060.0) == (state.arches["x86_64"].changed, state.arches["x86_64"].behind_since)
    assert 1050.0 == state.changed  # the result turned failed then
    assert ["published", "up-to-date", "failed", "failed"] == [
        h["result"] for h in state.as_json(None)["history"]
    ]


def test_a_dry_run_shows_the_planned_action_and_histories_are_bounded() -> None:
    status = _status()
    for _ in range(HISTORY + 5):
        status.synced("a:1", "pending", None, failures=0, retry_in=None, tags=[])
        state = status.planned("a:1", [Row("x86_64", "u", None, "build")], published_digest=None,
                               rebuilt=False)  # fmt: skip
        status.pass_finished(status.pass_started(), 1, 0, first=True)
    assert "build" == state.arches["x86_64"].outcome
    assert HISTORY == len(state.history) == len(status.as_json()["recent_passes"])
