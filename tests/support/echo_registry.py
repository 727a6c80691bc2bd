"""A FAKE registry that echoes the credentials it is sent back in its error bodies.

One job: play the hostile or careless registry of issue 19 for the tests that show no secret
leaves our process. No real registry echoes credentials, so this cannot be the real thing; it
speaks just enough of the distribution API for a client to get that far:

- ``GET /v2/`` answers 401 with a Bearer challenge whose realm is its own ``/token``;
- ``/token`` answers its first request 500 with an echo (so the client retries, and logs it),
  then 200 with a token of its own making;
- every other request answers an OCI error body (``{"errors": [{"code", "message"}]}``) whose
  message echoes the ``Authorization`` header it got, raw and percent-encoded, and what it
  decodes from it: the password of a Basic header raw, in base64, percent-encoded and
  form-encoded (``+`` for a space), and the token of a Bearer header in base64 and form-encoded.
  The first request of each method and path gets 503 (a retry), the next ones 403 ``DENIED``.

Every echo is kept under 300 characters (the length a client shortens error messages to), so a
secret that is not masked shows whole, and every echo is recorded for the test to check that
the echoes did happen. Runs in a thread (``tests.support.loopback``), plain HTTP or HTTPS
(``ssl``), on 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import ssl
import threading
import urllib.parse

from aiohttp import web

from tests.support.loopback import LoopbackServer

__all__ = ["EchoRegistry"]

_MAX_ECHO = 300


class EchoRegistry(LoopbackServer):
    """The fake; ``token`` is what its ``/token`` hands out."""

    name = "echo-registry"

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context=ssl_context)
        self.token = "echo-" + secrets.token_urlsafe(18)
        self.echoes: list[str] = []  # every echoed message, in order
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}"

    def echoed(self, kind: str) -> int:
        """How many echoes carried a ``Basic`` or a ``Bearer`` header."""
        with self._lock:
            return sum(1 for e in self.echoes if e.startswith(f"you sent {kind} "))

    # -- the app (served by LoopbackServer) -------------------------------------------------------

    async def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # -- the fake API ---------------------------------------------------------------------------

    def _echo(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        parts = [f"you sent {header}", f"as url {urllib.parse.quote(header, safe='')}"]
        if scheme == "Basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            password = decoded.partition(":")[2]
            parts += [
                f"password {password}",
                f"b64 {base64.b64encode(password.encode()).decode()}",
                f"url {urllib.parse.quote(password, safe='')}",
                f"form {urllib.parse.quote_plus(password)}",
            ]
        elif scheme == "Bearer":
            parts += [
                f"b64 {base64.b64encode(credential.encode()).decode()}",
                f"form {urllib.parse.quote_plus(credential)}",
            ]
        text = "; ".join(parts)
        assert len(text) < _MAX_ECHO, f"an echo of {len(text)} characters would be shortened"
        with self._lock:
            self.echoes.append(text)
        return text

    def _first(self, request: web.Request) -> bool:
        key = (request.method, request.path)
        with self._lock:
            first = key not in self._seen
            self._seen.add(key)
        return first

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.path == "/token":
            if self._first(request):
                return _error(500, "UNKNOWN", self._echo(request))
            return web.json_response({"token": self.token, "expires_in": 300})
        if request.path == "/v2/" or not request.headers.get("Authorization"):
            realm = f"{self.url}/token"
            challenge = f'Bearer realm="{realm}",service="echo-registry"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        if self._first(request):
            return _error(503, "UNAVAILABLE", self._echo(request))
        return _error(403, "DENIED", self._echo(request))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)
