"""A FAKE of Quay's repository API, on 127.0.0.1, that records every request.

One job: stand in for the two calls `docs publish` makes —
`PUT /api/v1/repository/<org>/<repo>` (`{"description": ...}`) and
`POST /api/v1/repository/<org>/<repo>/changevisibility` (`{"visibility": ...}`) — so tests can
assert the exact requests (method, path, headers, JSON body, order) and the failure handling.

This is a fake, not Quay: Quay cannot run here (docs/architecture.md "How it is tested"). It keeps
only what the tests need: a set of known repositories (others answer 404), one valid bearer token
(anything else answers 401), the stored description and visibility, error bodies shaped like Quay's
(`{"error_message", "detail", "error_type", "status"}`), and canned answers (a status a number of
times, an optional delay) for one method and path.

Decisions:
- Every request is recorded before it is answered, with its raw body and parsed JSON, so a
  test sees retries and requests that were refused.
- Runs in the test's loop (`async with`) or in a thread of its own (`with`), for tests that
  start the command line as a subprocess (`tests.support.loopback`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import LoopbackServer

__all__ = ["FakeQuay", "QuayRequest"]


@dataclass(frozen=True)
class QuayRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass
class _Canned:
    status: int
    body: dict[str, Any] | str
    times: int | None
    delay: float = 0.0


@dataclass
class _Repository:
    description: str = ""
    visibility: str = "private"
    history: list[str] = field(default_factory=list)


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error_message": message, "detail": message, "error_type": kind, "status": status}
    return web.json_response(body, status=status)


class FakeQuay(LoopbackServer):
    """A fake Quay API for `token`, knowing the repositories `<org>/<name>` in `repositories`."""

    name = "fake-quay"

    def __init__(self, token: str, repositories: Iterable[str]) -> None:
        super().__init__()
        self.token = token
        self.repositories = {r: _Repository() for r in repositories}
        self._lock = threading.Lock()
        self._requests: list[QuayRequest] = []
        self._canned: dict[tuple[str, str], _Canned] = {}

    # -- what tests use -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def requests(self) -> list[QuayRequest]:
        with self._lock:
            return list(self._requests)

    def respond(
        self,
        method: str,
        path: str,
        status: int,
        *,
        body: dict[str, Any] | str | None = None,
        times: int | None = 1,
        delay: float = 0.0,
    ) -> None:
        """Answer `method path` with `status` (and `body`, default a Quay-like error) `times`
        times (None: always), after `delay` seconds."""
        if body is None:
            body = {"error_message": f"canned {status}", "status": status}
        with self._lock:
            self._canned[(method, path)] = _Canned(status, body, times, delay)

    # -- the app (served by LoopbackServer) ---------------------------------------------------

    async def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/api/v1/repository/{org}/{repo}", self._put)
        app.router.add_post("/api/v1/repository/{org}/{repo}/changevisibility", self._visibility)
        app.middlewares.append(self._middleware)
        return app

    # -- the fake API -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        with self._lock:
            self._requests.append(
                QuayRequest(request.method, request.path, dict(request.headers), body, parsed)
            )
            canned = self._canned.get((request.method, request.path))
            if canned is not None and canned.times is not None:
                canned.times -= 1
                if canned.times <= 0:
                    del self._canned[(request.method, request.path)]
        if canned is not None:
            if canned.delay:
                await asyncio.sleep(canned.delay)
            if isinstance(canned.body, str):
                return web.Response(status=canned.status, text=canned.body)
            return web.json_response(canned.body, status=canned.status)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Invalid bearer token format", "invalid_token")
        if request.headers.get("Content-Type") != "application/json":
            return _error(415, "Content-Type must be application/json", "invalid_request")
        response: web.StreamResponse = await handler(request)
        return response

    def _repository(self, request: web.Request) -> _Repository | None:
        return self.repositories.get(f"{request.match_info['org']}/{request.match_info['repo']}")

    async def _put(self, request: web.Request) -> web.Response:
        repo = self._repository(request)
        if repo is None:
            return _error(404, "Not Found", "not_found")
        data = await request.json()
        if not isinstance(data, dict) or not isinstance(data.get("description"), str):
            return _error(400, "description is required", "invalid_request")
        repo.description = data["description"]
        repo.history.append("description")
        return web.json_response({"success": True})

    async def _visibility(self, request: web.Request) -> web.Response:
        repo = self._repository(request)
        if repo is None:
            return _error(404, "Not Found", "not_found")
        data = await request.json()
        if not isinstance(data, dict) or data.get("visibility") not in ("public", "private"):
            return _error(400, "visibility must be public or private", "invalid_request")
        repo.visibility = data["visibility"]
        repo.history.append(f"visibility={repo.visibility}")
        return web.json_response({"success": True})
