"""The HTTP server alone, over a `Status` whose clocks the test sets, and real `Metrics`.

`/healthz` follows the heartbeat only (fresh: 200, stale: 503); `/readyz` follows the first pass
and shutdown; `/status` renders entries and arches; `/metrics` is Prometheus text with the
`containerdisks_` names; only GET and HEAD are routed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from containerdisks.metrics import Metrics
from containerdisks.server import make_app, serving
from containerdisks.status import ArchState, Status


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def status(clock: Clock) -> Status:
    return Status(heartbeat_timeout=10.0, dry_run=False, monotonic=clock, wall=clock)


@pytest.fixture
async def client(status: Status) -> AsyncIterator[TestClient[aiohttp.web.Request, object]]:
    async with TestClient(TestServer(make_app(status, Metrics()))) as c:
        yield c


async def test_healthz_follows_the_heartbeat(
    client: TestClient[aiohttp.web.Request, object], status: Status, clock: Clock
) -> None:
    assert 200 == (await client.get("/healthz")).status  # starting up
    clock.now += 11
    assert 503 == (await client.get("/healthz")).status  # never ticked, too long
    status.beat()
    assert 200 == (await client.get("/healthz")).status
    clock.now += 9.9
    response = await client.get("/healthz")
    assert 200 == response.status
    assert {"alive": True, "heartbeat_age_seconds": 9.9} == await response.json()
    clock.now += 0.2
    assert 503 == (await client.get("/healthz")).status


async def test_readyz_after_the_first_pass_and_not_while_stopping(
    client: TestClient[aiohttp.web.Request, object], status: Status
) -> None:
    assert 503 == (await client.get("/readyz")).status
    started = status.pass_started()
    status.pass_finished(started + 1, 0, 0, first=False)  # a later pass, done early
    assert 503 == (await client.get("/readyz")).status
    status.pass_finished(started, 3, 1, first=True)
    response = await client.get("/readyz")
    assert 200 == response.status
    assert {"ready": True, "passes": 2, "stopping": False} == await response.json()
    status.stopping = True
    assert 503 == (await client.get("/readyz")).status


async def test_status_shows_entries_and_arches(
    client: TestClient[aiohttp.web.Request, object], status: Status, clock: Clock
) -> None:
    entry = status.entry("fedora:40")
    entry.result, entry.step, entry.digest = "published", "idle", "sha256:top"
    entry.arches["x86_64"] = ArchState("aa", "aa", "sha256:x", "build", "upstream changed")
    entry.last_success = clock.now
    status.next_pass = clock.now + 60
    failed = status.entry("ubuntu:*")
    failed.result, failed.error, failed.step = "failed", "ubuntu:*: HTTP 404", "backoff"
    failed.next_poll = clock.now + 30
    response = await client.get("/status")
    assert 200 == response.status
    assert "application/json" == response.content_type
    data = json.loads(await response.text())
    assert ["fedora:40", "ubuntu:*"] == list(data["entries"])
    fedora = data["entries"]["fedora:40"]
    assert {
        "upstream": "aa",
        "published": "aa",
        "digest": "sha256:x",
        "action": "build",
        "outcome": "",
        "reason": "upstream changed",
        "changed": None,
        "behind_since": None,
    } == fedora["arches"]["x86_64"]
    assert "1970-01-01T00:16:40Z" == fedora["last_success"]
    assert "1970-01-01T00:17:40Z" == fedora["next_poll"]  # with the next pass
    assert "1970-01-01T00:17:10Z" == data["entries"]["ubuntu:*"]["next_poll"]  # its backoff
    assert "ubuntu:*: HTTP 404" == data["entries"]["ubuntu:*"]["error"]


async def test_metrics_is_prometheus_text(client: TestClient[aiohttp.web.Request, object]) -> None:
    response = await client.get("/metrics")
    assert 200 == response.status
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(await response.text())}
    expected = {
        "containerdisks_passes",
        "containerdisks_pass_duration_seconds",
        "containerdisks_syncs",
        "containerdisks_sync_duration_seconds",
        "containerdisks_entry_last_success_timestamp_seconds",
        "containerdisks_entry_last_result",
        "containerdisks_queue_depth",
        "containerdisks_syncs_in_flight",
        "containerdisks_http_requests",
        "containerdisks_http_retries",
        "containerdisks_downloaded_bytes",
        "containerdisks_pushed_bytes",
    }
    assert expected <= names
    assert all(n.startswith("containerdisks_") for n in names)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/status"])
async def test_nothing_but_reads(
    client: TestClient[aiohttp.web.Request, object], method: str, path: str
) -> None:
    assert 405 == (await client.request(method, path)).status
    assert 200 == (await client.head("/healthz")).status


async def test_serving_binds_and_releases_the_port(status: Status) -> None:
    async with serving(status, Metrics(), "127.0.0.1", 0) as addresses:
        (host, port), *_ = addresses
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/healthz") as r,
        ):
            assert 200 == r.status
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(session.get(f"http://{host}:{port}/healthz"), 5)


async def test_the_page_is_the_status_escaped_under_a_csp_without_scripts(
    client: TestClient[aiohttp.web.Request, object], status: Status
) -> None:
    entry = status.entry("fedora:40")
    entry.result, entry.error = "failed", 'fedora:40: <img src=x onerror="alert(1)">'
    entry.arches["x86_64"] = ArchState("<b>aa</b>", None, None, "build", "", "failed")
    response = await client.get("/")
    assert 200 == response.status
    assert "text/html" == response.content_type
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp
    assert "nosniff" == response.headers["X-Content-Type-Options"]
    page = await response.text()
    assert '<meta http-equiv="refresh" content="30">' in page
    assert "<img" not in page
    assert "<b>aa" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert 'data-entry="fedora:40" data-arch="x86_64" data-outcome="failed"' in page
    data = await (await client.get("/status")).json()
    assert data["entries"]["fedora:40"]["error"] == entry.error  # the same source, unescaped


async def test_the_page_shows_the_leases_a_replica_holds_when_there_are_any(
    client: TestClient[aiohttp.web.Request, object], status: Status
) -> None:
    assert 'id="replica"' not in await (await client.get("/")).text()
    status.election = {"identity": "<pod-0>", "leader": True, "shards_held": [0, 2]}
    page = await (await client.get("/")).text()
    assert '<dl id="replica"><dt>identity</dt><dd>&lt;pod-0&gt;</dd>' in page
    assert "<dt>shards held</dt><dd>0, 2</dd>" in page
