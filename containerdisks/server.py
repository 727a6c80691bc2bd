"""The daemon's HTTP face: `/` (the status page), `/healthz`, `/readyz`, `/metrics`, `/status`,
read-only.

One job: answer probes, Prometheus and people from the `Status` and `Metrics` objects; it never
imports the scheduler (an import-linter contract) and nothing here changes state.

Decisions:
- `/healthz` is the scheduler's heartbeat only: 200 while the tick loop ticks, 503 when it is
  stuck. It does not look at upstream or the registry, so an outage of either never gets the pod
  restarted (that would only restart the outage's victims).
- `/readyz` is 503 until the first pass has completed (or synced all it discovered so far while
  only slow sources are still discovering: `Status.first_pass_settled`), and again while
  shutting down.
- Only GET (and HEAD) routes exist; anything else is 405 from aiohttp. `/status` shows entries,
  checksums, digests and errors, never a setting: no credential, token or mirror URL can leak.
  Errors shown are the engine's one-line messages, which are built to be secret-free, and every
  string of every answer passes through `containerdisks.oci.redact.redact_data` besides (a
  registry may echo a secret into an error body).
- `/` and `/status` are one source: both start from `_status_data` (the status's dict, every
  string redacted); `/` renders it with `containerdisks.statuspage`, which escapes every value,
  and is served with a Content-Security-Policy that allows no script and no external load
  (`default-src 'none'; style-src 'unsafe-inline'`), `nosniff` and no framing.
- The port faces a network, so what a client can hold is bounded. aiohttp bounds header sizes
  but neither the number of connections nor (before 3.14) the time a connection may take to
  send its first request, so a thin protocol wrapper (`_Guarded`) stands between asyncio's
  transport and aiohttp's handler: a connection that has not sent its request's headers
  within `header_timeout` is closed (aiohttp's keep-alive timeout, set to the same value, covers
  the next requests of a kept-alive connection), and at most `max_connections` are open. At the
  cap a new connection displaces the oldest one still owing its first request (the attacker's
  idle sockets displace each other, a probe gets through); when every open connection has sent
  one, the new connection is closed at once.
- aiohttp logs a malformed request ("Error handling request", with a traceback) through the
  stdlib; its handler gets a logger that turns that into one debug event (`http_bad_request`,
  the parser's message cut short) and any other exception into one error event, so nothing
  but JSON lines reaches stderr in the JSON format.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from containerdisks import __version__
from containerdisks.metrics import Metrics, content_type
from containerdisks.oci.redact import redact, redact_data
from containerdisks.status import Status, iso_now
from containerdisks.statuspage import render_page

__all__ = ["make_app", "serving"]

log = structlog.get_logger(__name__)

#: Defaults of `serving` (the settings `http_header_timeout` and `http_max_connections`).
HEADER_TIMEOUT = 5.0
MAX_CONNECTIONS = 100
#: How much of a malformed request's parser message is logged.
_ERROR_CHARS = 200

#: The page's headers: nothing runs, nothing is loaded from elsewhere, nothing frames it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

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
    response.headers["Content-Type"] = content_type()
    return response


def _status_data(status: Status) -> Any:
    """What `/status` and `/` show: the status's dict, every string redacted."""
    return redact_data(status.as_json())


async def _status(request: web.Request) -> web.Response:
    return _json(_status_data(request.app[_STATUS]))


async def _page(request: web.Request) -> web.Response:
    status = request.app[_STATUS]
    text = render_page(_status_data(status), version=__version__, now=iso_now(status.wall()))
    return web.Response(
        text=redact(text), content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )


def make_app(status: Status, metrics: Metrics) -> web.Application:
    app = web.Application()
    app[_STATUS] = status
    app[_METRICS] = metrics
    app.router.add_get("/", _page)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    return app


class _Limits:
    """The open connections of one listening socket, and those still owing their first request's
    headers, oldest first."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: set[_Guarded] = set()
        self.waiting: dict[_Guarded, None] = {}  # insertion-ordered: oldest first
        self._full = False

    def admit(self, conn: _Guarded) -> bool:
        """Count `conn` in, displacing the oldest waiting connection at the cap; False: refuse."""
        if len(self.open) >= self.max_connections:
            if not self._full:  # once per episode: a flood must not flood the log
                log.warning("http_connection_cap_reached", max_connections=self.max_connections)
                self._full = True
            if not self.waiting:
                return False
            next(iter(self.waiting)).close()
        elif len(self.open) < self.max_connections // 2:
            self._full = False
        self.open.add(conn)
        self.waiting[conn] = None
        return True

    def release(self, conn: _Guarded) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)


class _Guarded(asyncio.Protocol):
    """One connection: counted by `_Limits`, closed when its first request's headers are late;
    everything else is passed to aiohttp's handler, created only for an admitted connection."""

    def __init__(self, limits: _Limits, handler: Callable[[], asyncio.Protocol]) -> None:
        self._limits = limits
        self._handler = handler
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if not self._limits.admit(self):
            transport.abort()  # type: ignore[attr-defined]  # a stream transport
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.header_timeout, self._late)
        self._inner = self._handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._timer is not None:
            seen = self._tail + data[:3]
            if any(end in data or end in seen for end in (b"\r\n\r\n", b"\n\n")):
                self._timer.cancel()
                self._timer = None
                self._limits.waiting.pop(self, None)
            else:
                self._tail = (self._tail + data)[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def close(self) -> None:
        """Drop the connection now (displaced at the cap, or late)."""
        self._forget()
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]

    def _late(self) -> None:
        self._timer = None
        log.debug("http_header_timeout", timeout=self._limits.header_timeout)
        self.close()

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._limits.release(self)


class _OneLine(logging.Handler):
    """aiohttp's server log as structlog events: one line each, no traceback for bad requests."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(exc, HttpProcessingError):
            error = " ".join(str(exc).split())[:_ERROR_CHARS]
            log.debug("http_bad_request", message=message, error=error)
        elif exc is not None:
            log.error("http_server_error", message=message, exc_info=record.exc_info)
        else:
            log.log(record.levelno, "http_server", message=message)


def _server_logger() -> logging.Logger:
    logger = logging.getLogger("containerdisks.server.aiohttp")
    logger.propagate = False
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine())
    logger.setLevel(logging.DEBUG)
    return logger


@asynccontextmanager
async def serving(
    status: Status,
    metrics: Metrics,
    host: str,
    port: int,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> AsyncIterator[list[tuple[str, int]]]:
    """Listen on `host:port` while the block runs; yield the bound addresses (port 0: any)."""
    runner = web.AppRunner(
        make_app(status, metrics),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        keepalive_timeout=header_timeout,
        logger=_server_logger(),
    )
    await runner.setup()
    try:
        server = runner.server
        assert server is not None  # set up
        limits = _Limits(max_connections, header_timeout)
        listener = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(limits, server), host, port
        )
        try:
            addresses = [
                (str(a[0]), int(a[1])) for a in (s.getsockname() for s in listener.sockets)
            ]
            yield addresses
        finally:
            listener.close()
    finally:
        await runner.cleanup()
