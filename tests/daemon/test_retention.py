"""The daemon prunes an entry's old timestamp tags right after publishing it (retention on).

`serve` as a real process, the real registry, the loopback Fedora upstream; old timestamp tags
were put there by skopeo; the tag list afterwards is skopeo's. With deletes disabled, a
`serve --once` pass warns once and still succeeds.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from containerdisks.tags import timestamp_tags
from tests.daemon.conftest import Fedora, StartDaemon, serve_command
from tests.support.cli import clean_env
from tests.support.images import seeded_layout
from tests.support.registry import Registry

OLD = {"40-2401010000": "a", "40-2402010000": "b", "40-2403010000": "c", "39-2401010000": "d"}


def seed_old_tags(reg: Registry, tmp_path: Path) -> None:
    for tag, seed in OLD.items():
        layout = seeded_layout(tmp_path / "old" / seed, seed)
        reg.push_layout(layout, "t", "cd/fedora", tag, all_images=True, preserve_digests=True)


def test_a_pass_with_retention_on_prunes_after_publishing(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, _, _ = fedora_upstream
    seed_old_tags(registry, tmp_path)
    started = datetime.now(UTC)
    daemon = start_daemon(
        srv, f"{registry.host}/cd", "--focus", "fedora:40", "--keep-timestamp-tags", "2",
        interval=60.0,
    )  # fmt: skip
    daemon.ready()
    daemon.wait_for("the prune", lambda: bool(daemon.events("pruned")), 30)

    ended = datetime.now(UTC)

    tags = registry.list_tags("cd/fedora")
    stamps = timestamp_tags("40", tags)
    assert 2 == len(stamps), tags
    # this publish's stamp, as the daemon reports it wrote it, made from UTC now
    (written,) = timestamp_tags("40", daemon.status()["entries"]["fedora:40"]["tags"])
    assert f"40-{started:%y%m%d%H%M}" <= written <= f"40-{ended:%y%m%d%H%M}"
    assert [written, "40-2403010000"] == stamps  # the newest old one stays, next to it
    assert {"40", "40-1.14", "latest", "39-2401010000"} <= set(tags)  # never candidates
    assert not {"40-2401010000", "40-2402010000"} & set(tags)
    (pruned,) = daemon.events("pruned")
    assert "fedora:40" == pruned["entry"]
    assert ["40-2402010000", "40-2401010000"] == pruned["tags"]
    # The publish itself is a success, and what it published is whole.
    status = daemon.status()["entries"]["fedora:40"]
    assert (status["result"], status["error"]) == ("published", None)
    registry.pull("cd/fedora", "40", f"oci:{tmp_path / 'check'}:40", preserve_digests=False)


def test_once_against_a_registry_refusing_deletes_warns_once_and_exits_0(
    tmp_path: Path, no_delete_registry: Registry, fedora_upstream: Fedora
) -> None:
    reg = no_delete_registry
    srv, _, _ = fedora_upstream
    seed_old_tags(reg, tmp_path)
    # 39 and 40 both have an old stamp to drop (keep 1), in the one repository cd/fedora.
    result = subprocess.run(
        serve_command(srv, f"{reg.host}/cd", tmp_path, "--once", "--keep-timestamp-tags=1"),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(CONTAINERDISKS_RETRIES="1"),
        cwd=tmp_path,
    )
    assert 0 == result.returncode, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "retention_unsupported"]
    assert 1 == len(warnings), result.stderr
    assert not [e for e in events if e["level"] == "error"], result.stderr
    assert set(OLD) <= set(reg.list_tags("cd/fedora"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert all("Err" not in r for r in results.values())
