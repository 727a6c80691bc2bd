"""A one-byte-per-second upstream holds one worker of `serve` for one rate window, no longer,
while the other entries are published on the other worker and the daemon stays healthy."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.daemon.conftest import Daemon, Fedora, StartDaemon
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer

SLOW = "https://example.org/slow/disk.qcow2"
WINDOW = 4


async def one_byte_per_second() -> AsyncIterator[bytes]:
    while True:
        yield b"\0"
        await asyncio.sleep(1.0)


def start_slow(
    tmp_path: Path,
    registry: Registry,
    srv: UpstreamServer,
    start_daemon: StartDaemon,
    *,
    fedora_arches: str = "x86_64, aarch64",
    window: int = WINDOW,
    retries: int = 2,
) -> Daemon:
    """`serve` with 2 workers over a slow entry (first: the first worker takes it) and Fedora;
    the slow download fails after one rate `window`."""
    srv.respond_stream(SLOW, one_byte_per_second, content_length=1 << 20)
    config = tmp_path / "catalog.yaml"
    config.write_text(
        "catalog: replace\n"
        "entries:\n"
        "  - name: slow\n"
        '    version: "1"\n'
        "    arches: [x86_64]\n"
        "    source:\n"
        "      kind: static\n"
        f"      url: {SLOW}\n"
        f'      checksum: "{hashlib.sha256(b"").hexdigest()}"\n'
        "  - name: fedora\n"
        f"    arches: [{fedora_arches}]\n"
        "    source:\n"
        "      kind: fedora\n"
    )
    return start_daemon(
        srv,
        f"{registry.host}/cd",
        "--config",
        str(config),
        "--focus",
        "",
        "--workers",
        "2",
        interval=3600,
        env={
            "CONTAINERDISKS_MIN_TRANSFER_RATE": "1000",
            "CONTAINERDISKS_MIN_TRANSFER_RATE_WINDOW": str(window),
            "CONTAINERDISKS_RETRIES": str(retries),
        },
    )


def test_a_slow_entry_fails_in_its_window_while_the_others_publish(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, _, _ = fedora_upstream
    daemon = start_slow(tmp_path, registry, srv, start_daemon)
    daemon.wait_for(
        "slow:1 to fail", lambda: bool(daemon.events("publish_failed")), timeout=4 * WINDOW + 30
    )
    assert 200 == daemon.code("/healthz")
    events = daemon.events()
    (failed,) = [e for e in events if e["event"] == "publish_failed"]
    assert "slow:1" == failed["entry"]
    assert failed["error"].startswith(
        f"slow:1: {SLOW}: download slower than min_transfer_rate (1000 bytes/s) over {WINDOW} s ("
    )
    # Every Fedora entry was published while the slow download held the other worker.
    names = [(e["event"], e.get("entry")) for e in events]
    published = {entry for event, entry in names if event == "published"}
    assert {"fedora:40", "fedora:39", "fedora:41-beta"} <= published
    fedora_done = max(names.index(("published", k)) for k in published)
    assert fedora_done < names.index(("publish_failed", "slow:1"))
    started = events[names.index(("publishing", "slow:1"))]["timestamp"]
    assert started < events[fedora_done]["timestamp"]
    assert {"40", "39", "41-beta"} <= set(registry.list_tags("cd/fedora"))
