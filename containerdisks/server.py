"""The daemon's HTTP face: `/healthz`, `/readyz`, `/metrics`, `/status`, read-only.

One job: answer probes, Prometheus and people from the `Status` and `Metrics` objects; it never
imports the scheduler (an import-linter contract) and nothing here changes state.

Decisions:
- `/healthz` is the scheduler's heartbeat only: 200 while the tick loop ticks, 503 when it is
  stuck. It does not look at upstream or the registry, so an outage of either never gets the pod
  restarted (that would only restart the outage's victims).
- `/readyz` is 503 until the first pass has completed, and again while shutting down.
- Only GET (and HEAD) routes exist; anything else is 405 from aiohttp. `/status` shows entries,
  checksums, digests and errors, never a setting: no credential, token or mirror URL can leak.
  Errors shown are the engine's one-line messages, which are built to be secret-free, and every
  string of every answer passes through `containerdisks.oci.redact.redact_data` besides (a
  registry may echo a secret into an error body).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from containerdisks.metrics import CONTENT_TYPE, Metrics
from containerdisks.oci.redact import redact, redact_data
from containerdisks.status import Status

__all__ = ["make_app", "serving"]

_STATUS = web.AppKey("status", Status)
_METRICS = web.AppKey("metrics", Metrics)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=redact(json.dumps(redact_data(data), indent=2, sort_keys=False)) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _healthz(request: web.Request) -> web.Response:
    status = request.app[_STATUS]
    age = status.heartbeat_age()
    alive = status.alive()
    body = {"alive": alive, "heartbeat_age_seconds": None if age is None else round(age, 3)}
    return _json(body, 200 if alive else 503)


async def _readyz(request: web.Request) -> web.Response:
    status = request.app[_STATUS]
    ready = status.is_ready()
    body = {"ready": ready, "passes": status.passes, "stopping": status.stopping}
    return _json(body, 200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    data = request.app[_METRICS].render()
    response = web.Response(body=data, headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def _status(request: web.Request) -> web.Response:
    return _json(request.app[_STATUS].as_json())


def make_app(status: Status, metrics: Metrics) -> web.Application:
    app = web.Application()
    app[_STATUS] = status
    app[_METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    return app


@asynccontextmanager
async def serving(
    status: Status, metrics: Metrics, host: str, port: int
) -> AsyncIterator[list[tuple[str, int]]]:
    """Listen on `host:port` while the block runs; yield the bound addresses (port 0: any)."""
    runner = web.AppRunner(
        make_app(status, metrics), access_log=None, handle_signals=False, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addresses = [
            (str(a[0]), int(a[1])) for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2
        ]
        yield addresses
    finally:
        await runner.cleanup()
