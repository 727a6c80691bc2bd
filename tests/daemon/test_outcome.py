"""What a one-shot pass says it did: the outcome per entry and arch, failures once per cause,
`--exit-code` for CI, and no `retry_in` the run would never honour.

Real processes: `serve --once` (the single pass `images push` runs too) against Debian's
registry and a loopback upstream; a host that cannot be reached is a closed loopback port.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from containerdisks.engine.plan import ArchPlan, EntryPlan
from containerdisks.engine.results import ArchOutcome, arch_outcomes, failure_causes
from tests.daemon.conftest import Fedora, serve_command
from tests.support.cli import clean_env
from tests.support.loopback import free_port
from tests.support.registry import Registry

ENTRIES = {"fedora:40", "fedora:39", "fedora:41-beta"}


def once(
    fedora_upstream: Fedora, target: str, cwd: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    srv, _, _ = fedora_upstream
    return subprocess.run(
        serve_command(srv, target, cwd, "--once", *flags),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(CONTAINERDISKS_RETRIES="1"),
        cwd=cwd,
    )


def test_exit_code_says_whether_a_dry_run_would_publish(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    target = f"{registry.host}/cd"
    pending = once(fedora_upstream, target, tmp_path, "--dry-run=true", "--exit-code")
    assert 3 == pending.returncode, pending.stderr[-2000:]
    assert "build" in pending.stdout
    plain = once(fedora_upstream, target, tmp_path, "--dry-run=true")
    assert 0 == plain.returncode, plain.stderr[-2000:]
    published = once(fedora_upstream, target, tmp_path, "--output", "json")
    assert 0 == published.returncode, published.stderr[-2000:]
    doc = json.loads(published.stdout)
    assert [] == doc["failures"]
    outcomes = {(e["entry"], a["arch"]): a["outcome"] for e in doc["entries"] for a in e["arches"]}
    assert {"published"} == set(outcomes.values())
    assert ENTRIES == {entry for entry, _ in outcomes}
    entry = next(e for e in doc["entries"] if e["entry"] == "fedora:40")
    index = registry.inspect_raw("cd/fedora", "40")
    assert f"sha256:{hashlib.sha256(index).hexdigest()}" == entry["digest"]
    assert "40" in entry["moved"]
    nothing = once(fedora_upstream, target, tmp_path, "--dry-run", "--exit-code")
    assert 0 == nothing.returncode, nothing.stderr[-2000:]
    assert {"up-to-date"} == {line.split()[-1] for line in nothing.stdout.splitlines()[1:]}


def test_a_host_that_cannot_be_reached_is_said_once_naming_its_entries(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/"
    result = once(
        fedora_upstream,
        f"{registry.host}/cd",
        tmp_path,
        "--upstream-mirror",
        f"https://download.fedoraproject.org/={closed}",
    )
    assert 1 == result.returncode, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert 1 == len(lines), result.stdout
    entries, _, why = lines[0].partition("  failed: ")
    assert ENTRIES == set(entries.split(", "))
    assert why.startswith("cannot connect to 127.0.0.1:"), why
    events = [json.loads(line) for line in result.stderr.splitlines()]
    # One-shot: nothing is retried after the pass, so no event promises a retry.
    assert [] == [e for e in events if "retry_in" in e]
    assert ENTRIES == {e["entry"] for e in events if e["event"] == "publish_failed"}


def test_an_arch_waiting_for_another_is_told_under_that_arch_cause() -> None:
    plans = [
        EntryPlan(
            "centos-stream:9",
            [
                ArchPlan("x86_64", "aa", None, "failed", "waiting for aarch64"),
                ArchPlan("aarch64", None, None, "failed", "https://c.example/CHECKSUM: HTTP 404"),
            ],
            error="aarch64: https://c.example/CHECKSUM: HTTP 404",
        ),
        EntryPlan(
            "ubuntu:24.04",
            [
                ArchPlan("x86_64", None, None, "failed", "https://u.example/SHA256SUMS: HTTP 503"),
                ArchPlan("s390x", None, None, "failed", "https://u.example/SHA256SUMS: HTTP 503"),
            ],
            error="x86_64: ...",
        ),
        EntryPlan(
            "ubuntu:22.04",
            [
                ArchPlan("x86_64", "bb", "bb", "up-to-date", "", "sha256:" + "1" * 64),
                ArchPlan("s390x", None, None, "failed", "https://u.example/SHA256SUMS: HTTP 503"),
            ],
            error="s390x: ...",
        ),
    ]
    rows: list[ArchOutcome] = []
    for plan in plans:
        rows += arch_outcomes(_Done(plan), dry_run=False)
    causes = failure_causes(rows)
    assert [
        ("https://c.example/CHECKSUM: HTTP 404", "centos-stream:9"),
        ("https://u.example/SHA256SUMS: HTTP 503", "ubuntu:24.04, ubuntu:22.04 (s390x)"),
    ] == [(c.reason, c.entries()) for c in causes]
    assert ["up-to-date"] == [r.outcome for r in rows if r.outcome != "failed"]


class _Done:
    def __init__(self, plan: EntryPlan) -> None:
        self.plan = plan
        self.tags: list[str] = []
        self.error = plan.error
        self.digest = ""
