"""`serve` as a real process against the real registry and a local upstream, on a short interval.

- Not ready until the first pass completed (the first upload is held by the fault proxy to make
  "before" observable); alive all along; an entry already queued or running is not queued again
  by the passes that come meanwhile.
- Everything is published (read back with skopeo); an upstream change is published within two
  intervals; `/status` shows it; `/metrics` counts passes, syncs, bytes and requests.
- The registry goes away: `/healthz` stays 200, the entry fails and backs off; the registry comes
  back on the same port and storage: the next attempt catches up.
- Logs: JSON lines, one event per stage with entry, arch, bytes and duration.
- Nothing on the port changes state or reveals a secret (a registry with Basic auth).
"""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.daemon.conftest import Daemon, Fedora, StartDaemon, stop_registry
from tests.support.disks import make_qcow2, replace_fedora_image, sha256
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.registry import Registry

INTERVAL = 2.0
JITTER = 0.1


def metric(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics().get((name, tuple(sorted(labels.items()))))


def arch(status: dict[str, Any], entry: str, name: str) -> dict[str, Any]:
    arch_state: dict[str, Any] = status["entries"][entry]["arches"][name]
    return arch_state


@contextmanager
def first_upload_held(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> Iterator[tuple[Daemon, FaultProxy]]:
    """A daemon whose first upload the fault proxy holds until the test releases it; the
    block starts once a second pass has begun meanwhile, and ends with a clean SIGTERM."""
    srv, _, _ = fedora_upstream
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("PATCH", r"/v2/cd/fedora/blobs/uploads/", "hold", times=1))
        daemon = start_daemon(srv, f"{proxy.host}/cd", interval=INTERVAL)
        assert proxy.wait_held(60), daemon.log_text()
        daemon.wait_for("the server", lambda: daemon.code("/healthz") == 200)
        daemon.wait_for("a second pass", lambda: len(daemon.events("pass_started")) >= 2, 10)
        yield daemon, proxy
        daemon.signal(signal.SIGTERM)
        assert 0 == daemon.wait(30)


def test_serve_is_alive_but_not_ready_until_the_first_pass_completes(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    with first_upload_held(registry, fedora_upstream, start_daemon) as (daemon, proxy):
        # The first pass cannot complete while its upload is held: alive, not ready.
        assert 200 == daemon.code("/healthz")
        assert 503 == daemon.code("/readyz")
        assert "running" in {e["state"] for e in daemon.status()["entries"].values()}
        assert daemon.metrics()[("containerdisks_syncs_in_flight", ())] >= 1
        proxy.release()
        daemon.ready()
        assert daemon.status()["ready"] is True


def test_serve_does_not_queue_an_entry_already_queued_or_running(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    with first_upload_held(registry, fedora_upstream, start_daemon) as (daemon, proxy):
        proxy.release()
        daemon.ready()
        # The passes that came while fedora's entries were queued or running skipped them.
        skipped = daemon.events("skipped")
        assert skipped, "the second pass should have found the entries still queued or running"
        assert {"already queued or running"} == {e["reason"] for e in skipped}
        first_pass = next(e for e in daemon.events("pass_finished") if e["number"] == 1)
        assert (3, 0) == (first_pass["entries"], first_pass["failed"])
        # Each entry was synced once by the first pass, however many passes came meanwhile.
        first_syncs = [e["entry"] for e in daemon.events("synced")][:3]
        assert sorted(first_syncs) == sorted(set(first_syncs))


def test_serve_publishes_an_upstream_change_within_two_intervals(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, disks, root = fedora_upstream
    daemon = start_daemon(srv, f"{registry.host}/cd", interval=INTERVAL)
    daemon.ready()
    # Everything is published, as an independent client sees it.
    tags = set(registry.list_tags("cd/fedora"))
    assert {"40", "40-1.14", "39", "latest", "41-beta"} <= tags

    new = make_qcow2(tmp_path / "new.qcow2", "a new fedora 40 x86_64")
    replace_fedora_image(root, "40", "x86_64", new)
    changed = time.monotonic()

    def published() -> bool:
        return arch(daemon.status(), "fedora:40", "x86_64")["published"] == sha256(new)

    daemon.wait_for("the change to be published", published, 30)
    elapsed = time.monotonic() - changed
    assert elapsed < 2 * INTERVAL, f"published after {elapsed:.2f}s"

    raw = json.loads(registry.inspect_raw("cd/fedora", "40"))
    config_digests = []
    for m in raw["manifests"]:
        if m["platform"]["architecture"] == "amd64":
            child = json.loads(registry.inspect_raw("cd/fedora", m["digest"]))
            config_digests.append(child["config"]["digest"])
    assert 1 == len(config_digests)

    # /status: upstream and published checksums agree, the other arch kept its digest.
    status = daemon.status()
    entry = status["entries"]["fedora:40"]
    assert entry["result"] in ("published", "up-to-date")
    assert entry["error"] is None
    assert sha256(new) == arch(status, "fedora:40", "x86_64")["upstream"]
    aarch64 = arch(status, "fedora:40", "aarch64")
    assert sha256(disks[("40", "aarch64")]) == aarch64["published"]
    assert status["ready"] is True
    assert status["next_pass"] is not None

    # The results file is rewritten after every pass, in the work dir.
    assert (tmp_path / "work" / "results.json").exists()
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(30)


def test_serve_metrics_count_passes_syncs_bytes_and_requests(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, disks, _ = fedora_upstream
    started = time.time()
    daemon = start_daemon(srv, f"{registry.host}/cd", interval=INTERVAL)
    daemon.ready()
    daemon.wait_for("a second pass", lambda: len(daemon.events("pass_finished")) >= 2, 10)
    queue = ("containerdisks_queue_depth", ())
    in_flight = ("containerdisks_syncs_in_flight", ())

    def idle() -> bool:
        m = daemon.metrics()
        return (m[queue], m[in_flight]) == (0, 0)

    # Between passes nothing waits and nothing runs: the gauges come back down.
    daemon.wait_for("the queue to drain", idle, 10)

    m = daemon.metrics()
    assert m[("containerdisks_passes_total", ())] >= 2
    # The first pass published the 3 entries; the next ones found them up to date.
    assert 3 == m[("containerdisks_syncs_total", (("result", "published"),))]
    assert 3 == m[("containerdisks_sync_duration_seconds_count", (("result", "published"),))]
    last_success = m[
        ("containerdisks_entry_last_success_timestamp_seconds", (("entry", "fedora:40"),))
    ]
    assert started <= last_success <= time.time()
    # Every image once (the catalog excludes Fedora 40 s390x), and metadata.
    images = sum(len(d) for k, d in disks.items() if k != ("40", "s390x"))
    downloaded = ("containerdisks_downloaded_bytes_total", (("host", f"127.0.0.1:{srv.port}"),))
    assert images < m[downloaded] < images + 1_000_000
    layers = sum(e["layer"] for e in daemon.events("layer_pushed"))
    assert layers <= m[("containerdisks_pushed_bytes_total", (("registry", registry.host),))]
    registry_requests = (
        "containerdisks_http_requests_total",
        (("host", registry.host), ("kind", "registry")),
    )
    assert m[registry_requests] > 0
    upstream_requests = (
        "containerdisks_http_requests_total",
        (("host", f"127.0.0.1:{srv.port}"), ("kind", "upstream")),
    )
    before = srv.count()
    counted = daemon.metrics()[upstream_requests]
    assert before <= counted <= srv.count() + 1  # a pass may be asking right now
    results = {
        labels[0][1]: value
        for (name, labels), value in m.items()
        if name == "containerdisks_entry_last_result" and ("entry", "fedora:40") in labels
    }
    assert 1.0 == max(results.values())
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(30)


def test_logs_are_json_lines_one_event_per_stage(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, _, _ = fedora_upstream
    daemon = start_daemon(srv, f"{registry.host}/cd", "--focus", "fedora:40")
    daemon.ready()
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(30)
    lines = [line for line in daemon.log_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is JSON
    names = [e["event"] for e in events]
    stages = [
        *("listening", "pass_started", "discovered", "planned", "publishing", "layer_pushed"),
        *("built", "tagged", "published", "synced", "pass_finished", "shutdown_requested"),
        *("shutdown_started", "shutdown_finished", "stopped"),
    ]
    assert [] == [stage for stage in stages if stage not in names]
    pushed = daemon.events("layer_pushed")
    assert {"x86_64", "aarch64"} == {e["arch"] for e in pushed}
    synced = daemon.events("synced")[0]
    assert ("fedora:40", "published") == (synced["entry"], synced["result"])
    assert synced["seconds"] > 0
    for e in pushed:
        assert "fedora:40" == e["entry"]
        assert e["downloaded"] > 0
        assert e["layer"] > 0
        # A layer is part of its entry's sync (its seconds are rounded to 2 decimals, not 3).
        assert 0 <= e["seconds"] <= synced["seconds"] + 0.005
    assert all({"timestamp", "level", "event"} <= set(e) for e in events)


def test_registry_outage_keeps_healthz_and_the_next_attempt_catches_up(
    tmp_path: Path,
    registry: Registry,
    fedora_upstream: Fedora,
    start_daemon: StartDaemon,
    restart_registry: Any,
) -> None:
    srv, _, root = fedora_upstream
    env = {
        "CONTAINERDISKS_RETRIES": "1",
        "CONTAINERDISKS_CONNECT_TIMEOUT": "1",
        "CONTAINERDISKS_BACKOFF_INITIAL": "0.5",
        "CONTAINERDISKS_BACKOFF_MAX": "1",
    }
    daemon = start_daemon(srv, f"{registry.host}/cd", "--focus", "fedora:40", env=env)
    daemon.ready()

    stop_registry(registry)
    new = make_qcow2(tmp_path / "new.qcow2", "fedora 40 during the outage")
    replace_fedora_image(root, "40", "x86_64", new)

    def failed() -> bool:
        return daemon.status()["entries"]["fedora:40"]["failures"] >= 2

    daemon.wait_for("the entry to fail twice", failed, 20)
    outage_end = time.monotonic() + 2.0
    while time.monotonic() < outage_end:  # alive throughout: the outage is not ours to fix
        assert 200 == daemon.code("/healthz")
        time.sleep(0.1)
    entry = daemon.status()["entries"]["fedora:40"]
    assert "failed" == entry["result"]
    assert entry["error"]
    assert "fedora:40" in entry["error"]
    assert entry["state"] in ("backoff", "queued", "running")
    assert entry["next_poll"] is not None
    failures = metric(daemon, "containerdisks_entry_consecutive_failures", entry="fedora:40")
    assert failures is not None
    assert failures >= 2

    restart_registry(registry)
    back = time.monotonic()

    def caught_up() -> bool:
        return arch(daemon.status(), "fedora:40", "x86_64")["published"] == sha256(new)

    daemon.wait_for("the catch-up", caught_up, 20)
    # Bounded by the longest backoff (1 s, jittered) plus one pass interval and the publish.
    assert time.monotonic() - back < 1 + 1.1 + 5
    assert 0 == metric(daemon, "containerdisks_entry_consecutive_failures", entry="fedora:40")
    assert 200 == daemon.code("/healthz")
    index = json.loads(registry.inspect_raw("cd/fedora", "40"))
    assert 2 == len(index["manifests"])
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(30)


def test_the_port_changes_nothing_and_reveals_no_secret(
    tmp_path: Path, basic_registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, _, _ = fedora_upstream
    user, password = basic_registry.credentials or ("", "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))
    daemon = start_daemon(
        srv,
        f"{basic_registry.host}/cd",
        "--focus",
        "fedora:40",
        env={"REGISTRY_AUTH_FILE": str(auth)},
    )
    daemon.ready()
    assert "40" in basic_registry.list_tags("cd/fedora")
    for path in ("/healthz", "/readyz", "/metrics", "/status"):
        code, body = daemon.get(path)
        assert 200 == code, path
        assert password.encode() not in body, path
        assert token.encode() not in body, path
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert 405 == daemon.get(path, method)[0], (method, path)
    assert 404 == daemon.code("/")
    assert password not in daemon.log_text()
    assert token not in daemon.log_text()
    before = daemon.status()["passes"]
    daemon.signal(signal.SIGINT)
    assert 0 == daemon.wait(30)
    assert before >= 1


def test_retries_are_counted_by_upstream_host_and_registry(
    registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, _, _ = fedora_upstream
    srv.respond("https://getfedora.org/releases.json", 503, times=1)
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("GET", r"/v2/cd/fedora/manifests/40$", "status", status=503, times=1))
        daemon = start_daemon(
            srv, f"{proxy.host}/cd", "--focus", "fedora:40", env={"CONTAINERDISKS_RETRIES": "3"}
        )
        daemon.ready()
        upstream = metric(
            daemon,
            "containerdisks_http_retries_total",
            kind="upstream",
            host=f"127.0.0.1:{srv.port}",
        )
        registry_retries = metric(
            daemon, "containerdisks_http_retries_total", kind="registry", host=proxy.host
        )
        requests = metric(
            daemon, "containerdisks_http_requests_total", kind="registry", host=proxy.host
        )
        daemon.signal(signal.SIGTERM)
        assert 0 == daemon.wait(30)
    assert 1 == upstream
    assert 1 == registry_retries
    assert requests is not None
    assert requests >= 2
    assert "40" in registry.list_tags("cd/fedora")


def test_sighup_starts_a_pass_now(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    """An hour between passes, yet an upstream change is published right after a SIGHUP."""
    srv, _, root = fedora_upstream
    daemon = start_daemon(srv, f"{registry.host}/cd", interval=3600.0)
    daemon.ready()
    new = make_qcow2(tmp_path / "new.qcow2", "fedora 40 x86_64, published on SIGHUP")
    replace_fedora_image(root, "40", "x86_64", new)
    assert 1 == len(daemon.events("pass_started"))
    daemon.signal(signal.SIGHUP)

    def published() -> bool:
        return arch(daemon.status(), "fedora:40", "x86_64")["published"] == sha256(new)

    daemon.wait_for("the change to be published after SIGHUP", published, 60)
    assert [{"signal": "SIGHUP"}] == [
        {"signal": e["signal"]} for e in daemon.events("pass_requested")
    ]
    assert [1, 2] == [e["number"] for e in daemon.events("pass_started")]
    assert daemon.proc.poll() is None  # SIGHUP did not end it
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(30)
