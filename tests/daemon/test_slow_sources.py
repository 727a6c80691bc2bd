"""One slow or hostile source holds up nothing else in `serve` (a real process, the real registry).

- A Fedora mirror that stalls (a fault proxy that never answers releases.json) beside a healthy
  `checksum-file` entry: the healthy entry is published and `/readyz` turns 200 while Fedora's
  discovery is still stuck; Fedora then fails within its `discovery_timeout`, in one line.
- A catalog regex that backtracks catastrophically on a long upstream name: the entry fails in
  bounded time, `/healthz` answers all along, and SIGTERM still drains at once.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.daemon.conftest import Daemon
from tests.support.cli import clean_env
from tests.support.disks import checksum_file_tree
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer, put

RELEASES = "https://getfedora.org/releases.json"
DISCOVERY_TIMEOUT = 15.0


def serve(tmp_path: Path, registry: Registry, entries: list[dict[str, Any]], *mirrors: str,
          interval: float = 600.0, env: dict[str, str] | None = None) -> Daemon:  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"catalog": "replace", "entries": entries}))
    command = [
        sys.executable,
        "-m",
        "containerdisks",
        "serve",
        "--dry-run=false",
        "--config",
        str(config),
        "--source-registry",
        f"{registry.host}/cd",
        "--log-format",
        "json",
        "--work-dir",
        str(tmp_path / "work"),
        "--interval",
        str(interval),
        *mirrors,
    ]
    return Daemon(command, tmp_path, clean_env(**(env or {})), "serve")


def test_a_stalled_source_holds_up_neither_the_others_nor_readiness(
    tmp_path: Path, registry: Registry
) -> None:
    root = tmp_path / "up"
    healthy = checksum_file_tree(root, "tiny")
    put(root, RELEASES, "[]")
    fedora = {"name": "fedora", "arches": ["x86_64"], "source": {"kind": "fedora"}}
    with UpstreamServer(root) as srv, FaultProxy(srv.base_url) as proxy:
        proxy.add(Rule("GET", r"^/getfedora\.org/releases\.json$", "stall", times=None))
        mirrors = [
            *srv.mirror_args(),
            "--upstream-mirror",
            f"https://getfedora.org/={proxy.url}/getfedora.org/",
        ]
        env = {"CONTAINERDISKS_DISCOVERY_TIMEOUT": str(DISCOVERY_TIMEOUT)}
        daemon = serve(tmp_path, registry, [fedora, healthy], *mirrors, env=env)
        try:
            daemon.ready(timeout=DISCOVERY_TIMEOUT)
            ready_after = time.monotonic() - daemon.started
            # Ready while Fedora is still stuck on the stalled request.
            assert [] == daemon.events("discovery_failed")
            assert "fedora:*" not in daemon.status()["entries"]
            assert any(e.path == "/getfedora.org/releases.json" for e in proxy.log)
            assert "1" in registry.list_tags("cd/tiny")
            assert "published" == daemon.status()["entries"]["tiny:1"]["result"]

            def fedora_failed() -> bool:
                return bool(daemon.events("discovery_failed"))

            daemon.wait_for("fedora to fail", fedora_failed, DISCOVERY_TIMEOUT + 30)
            failed_after = time.monotonic() - daemon.started
            (event,) = daemon.events("discovery_failed")
            expected = f"source 'fedora': discovery took longer than {DISCOVERY_TIMEOUT:g} s"
            assert ("fedora:*", f"{expected} (discovery_timeout)") == (
                event["entry"],
                event["error"],
            )
            assert ready_after < DISCOVERY_TIMEOUT <= failed_after < DISCOVERY_TIMEOUT + 30
            status = daemon.status()
            assert "failed" == status["entries"]["fedora:*"]["result"]
            assert status["ready"] is True
            daemon.wait_for("the first pass", lambda: bool(daemon.events("pass_finished")), 10)
            (finished,) = daemon.events("pass_finished")
            assert (2, 1, 1) == (finished["entries"], finished["failed"], finished["published"])
            daemon.signal(signal.SIGTERM)
            assert 0 == daemon.wait(30)
        finally:
            daemon.kill()
    assert "Traceback" not in daemon.log_text()


def test_a_catastrophic_regex_fails_its_entry_in_bounded_time_and_blocks_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    root = tmp_path / "up"
    healthy = checksum_file_tree(root, "tiny")
    evil = checksum_file_tree(root, "evil")
    sums = "https://images.example/evil/SHA256SUMS"
    long_name = "a" * 200 + "b.qcow2"  # a plain name: 207 bytes
    put(
        root,
        sums,
        f"{'e' * 64}  {long_name}\n" + (root / "images.example/evil/SHA256SUMS").read_text(),
    )
    evil["source"]["match"] = r"(a|a)+\.qcow2|evil-{arch}\.qcow2"
    with UpstreamServer(root) as srv:
        daemon = serve(tmp_path, registry, [evil, healthy], *srv.mirror_args(), interval=3.0)
        try:
            codes: list[int] = []

            def evil_failed() -> bool:
                codes.append(daemon.code("/healthz"))
                return "evil:1" in daemon.status()["entries"] and bool(
                    daemon.status()["entries"]["evil:1"]["error"]
                )

            daemon.wait_for("the healthz server", lambda: daemon.code("/healthz") == 200)
            waited = daemon.wait_for("evil:1 to fail", evil_failed, 60)
            error = daemon.status()["entries"]["evil:1"]["error"]
            assert error == (
                f"x86_64: {sums}: match '(a|a)+\\.qcow2|evil-x86_64\\.qcow2' took longer than "
                "2 s on the upstream names"
            )
            assert waited < 60
            # /healthz answered every time it was asked, quickly (5 s client timeout).
            assert len(codes) >= 5
            assert {200} == set(codes)
            daemon.wait_for("tiny:1 published", lambda: "1" in registry.list_tags("cd/tiny"), 30)

            # The next pass matches again: SIGTERM in the middle of it drains at once.
            asked = srv.count(sums)
            daemon.wait_for("the next pass", lambda: srv.count(sums) > asked, 30)
            sent = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert 0 == daemon.wait(30)
            drained = time.monotonic() - sent
            assert drained < 10, drained
        finally:
            daemon.kill()
    assert "Traceback" not in daemon.log_text()
    assert daemon.events("shutdown_finished")
