"""A fault-injecting reverse proxy for tests, in front of the real registry or upstream server.

One job: forward HTTP to a real backend byte for byte, except where a rule says to misbehave:
answer a status (5xx, 429 with `Retry-After`) a number of times, reset the connection after
part of a request body went through, slow a body down, or *hold* a request until the test
releases it — so that a signal or a kill lands mid-upload deterministically. Every request is
logged (method, path, status, time) so tests can check the order of writes: no tag before all
blobs and manifests, moving tags last.

It runs in a background thread with its own event loop (`with FaultProxy(backend) as p:`, see
`tests.support.loopback`), so a CLI subprocess can be pointed at it. `Location` headers naming
the backend are rewritten to the proxy, so clients that follow them stay behind the proxy.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.support.loopback import LoopbackServer

__all__ = ["FaultProxy", "Logged", "Rule"]

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Rule:
    """What to do with requests whose method and path match.

    action: "status" (answer `status` with `headers`), "reset" (forward `after_bytes` of the
    request body, then drop the connection), "truncate" (send `after_bytes` of the response
    body, then drop the connection), "slow" (forward, sleeping `delay` per body chunk), "hold"
    (wait until released, then forward), "stall" (never answer), "endless" (forward the body
    without its Content-Length, then `extra` zero bytes more: a body that does not end),
    "overlong" (announce and send `extra` zero bytes more than the backend's body).
    `times` counts matching requests to affect (None: all).
    """

    method: str
    path: str  # a regex, searched in the path
    action: str
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    after_bytes: int = 0
    delay: float = 0.0
    extra: int = 1 << 30
    times: int | None = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return (self.method in ("*", method)) and re.search(self.path, path) is not None


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    query: str
    status: int  # 0: the connection was dropped
    started: float
    ended: float
    action: str


class FaultProxy(LoopbackServer):
    name = "fault-proxy"
    #: Held and stalled requests are let go on stop; a slow body is not waited for.
    shutdown_timeout = 1.0

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend.rstrip("/")
        self._rules: list[Rule] = []
        self._log: list[Logged] = []
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._release: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._held = threading.Event()
        self._holding = 0  # requests being held now

    # -- control from the test thread --------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def log(self) -> list[Logged]:
        with self._lock:
            return list(self._log)

    def wait_held(self, timeout: float = 30.0) -> bool:
        """Block until a request is being held."""
        return self._held.wait(timeout)

    def wait_holding(self, count: int, timeout: float = 30.0) -> bool:
        """Block until `count` requests are being held at once (a barrier for racers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._holding >= count:
                    return True
            time.sleep(0.01)
        return False

    def release(self) -> None:
        loop, event = self.loop, self._release
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    # -- the app (served by LoopbackServer) -----------------------------------------------------

    async def _app(self) -> web.Application:
        self._release = asyncio.Event()
        self._stopping = asyncio.Event()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def stop(self) -> None:
        """Let held and stalled requests go, stop serving, then close the client session."""
        if self._release is not None:
            self._release.set()
        if self._stopping is not None:
            self._stopping.set()
        await super().stop()
        if self._session is not None:
            await self._session.close()

    # -- proxying -------------------------------------------------------------------------------

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, request: web.Request, status: int, started: float, action: str) -> None:
        with self._lock:
            self._log.append(
                Logged(
                    request.method,
                    request.path,
                    request.query_string,
                    status,
                    started,
                    time.monotonic(),
                    action,
                )
            )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        rule = self._rule_for(request.method, request.path)
        action = rule.action if rule else "forward"
        if rule is not None and rule.action == "status":
            await request.read()
            self._record(request, rule.status, started, action)
            return web.Response(
                status=rule.status,
                headers=rule.headers,
                text='{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}',
            )
        if rule is not None and rule.action == "stall":
            self._record(request, 0, started, action)
            assert self._stopping is not None
            await self._stopping.wait()
            raise _DroppedError
        if rule is not None and rule.action == "hold":
            assert self._release is not None
            self._held.set()
            with self._lock:
                self._holding += 1
            try:
                await self._release.wait()
            finally:
                with self._lock:
                    self._holding -= 1
        body: AsyncIterator[bytes] | None = None
        if request.body_exists:
            body = self._body(request, rule)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        assert self._session is not None
        url = f"{self.backend}{request.path_qs}"
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                # Logged when the backend has answered, before the client can see the answer:
                # a test that reads the log after the client finished sees this request.
                self._record(request, upstream.status, started, action)
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
                if "Location" in out_headers:
                    out_headers["Location"] = out_headers["Location"].replace(
                        self.backend, self.url
                    )
                response = web.StreamResponse(status=upstream.status, headers=out_headers)
                extend = rule is not None and rule.action in ("endless", "overlong")
                if upstream.content_length is not None and not (rule and rule.action == "endless"):
                    response.content_length = upstream.content_length
                    if extend and rule is not None:
                        response.content_length += rule.extra
                await response.prepare(request)
                sent = 0
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    if rule is not None and rule.action == "slow":
                        await asyncio.sleep(rule.delay)
                    if (
                        rule is not None
                        and rule.action == "truncate"
                        and sent + len(chunk) > rule.after_bytes
                    ):
                        await response.write(chunk[: rule.after_bytes - sent])
                        if request.transport is not None:
                            request.transport.abort()
                        raise _DroppedError
                    sent += len(chunk)
                    await response.write(chunk)
                if extend and rule is not None:
                    zeros = bytes(1 << 16)
                    for start in range(0, rule.extra, len(zeros)):  # until the client hangs up
                        await response.write(zeros[: rule.extra - start])
                await response.write_eof()
                return response
        except _DroppedError:
            self._record(request, 0, started, action)
            raise
        except (aiohttp.ClientError, ConnectionError):
            self._record(request, 0, started, action)
            if request.transport is not None:
                request.transport.close()
            raise

    async def _body(self, request: web.Request, rule: Rule | None) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in request.content.iter_any():
            if rule is not None and rule.action == "reset" and sent + len(chunk) > rule.after_bytes:
                if request.transport is not None:
                    request.transport.abort()
                raise _DroppedError
            if rule is not None and rule.action == "slow":
                await asyncio.sleep(rule.delay)
            sent += len(chunk)
            yield chunk


class _DroppedError(Exception):
    """The rule dropped the connection mid-body."""
