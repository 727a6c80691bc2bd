"""A small Docker token service (distribution ``auth.token``) for tests, in a background thread.

Decision: it runs an aiohttp app on its own event loop in a daemon thread
(`tests.support.loopback`), so sync fixtures can start it and both sync and async tests can use
it, and it records every request so tests can assert how many tokens a client asked for (token
reuse) and for which scopes.

Rules (distribution's token auth, as `docker-registry` 2.8 takes it): anonymous callers get ``pull``
only; a known user gets the actions they ask for; a wrong password gets 401 ``{"errors": [{"code":
"UNAUTHORIZED"}]}``. Tokens are RS256 JWTs with an ``x5c`` header holding the signing certificate,
which is also the registry's ``rootcertbundle``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.loopback import LoopbackServer

__all__ = ["TokenRequest", "TokenServer"]


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    user: str | None  # None: anonymous
    service: str | None
    scopes: tuple[str, ...]
    status: int
    token: str | None = field(default=None, repr=False)


def _signing_material() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-token-signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


class TokenServer(LoopbackServer):
    """Issues registry tokens on ``http://127.0.0.1:<port>/token`` (``with TokenServer(...):``).

    ``expires_in`` is what the reply announces (None: leave it out); ``token_fields`` chooses
    whether the reply carries ``token``, ``access_token`` or both.
    """

    name = "token-server"

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        issuer: str = "test-issuer",
        service: str = "test-registry",
        lifetime: int = 300,
        expires_in: int | None = 300,
        token_fields: tuple[str, ...] = ("token", "access_token"),
    ) -> None:
        super().__init__()
        self.workdir = workdir
        self.users = dict(users if users is not None else {"testuser": "testpass"})
        self.issuer = issuer
        self.service = service
        self.lifetime = lifetime
        self.expires_in = expires_in
        self.token_fields = token_fields
        self.cert_path = workdir / "token.crt"
        self._key, self._cert = _signing_material()
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self._key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []

    # -- what tests look at -----------------------------------------------------------------

    @property
    def realm(self) -> str:
        """The URL the registry names in its Bearer challenge."""
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def requests(self) -> list[TokenRequest]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, scope: str | None = None) -> int:
        """How many requests (for ``scope``, if given) were answered."""
        return sum(1 for r in self.requests if scope is None or scope in r.scopes)

    def issued_tokens(self) -> list[str]:
        """Every token handed out, to check that none leaks into logs or messages."""
        return [r.token for r in self.requests if r.token]

    # -- the app (served by LoopbackServer) -------------------------------------------------

    async def _app(self) -> web.Application:
        """Write the signing certificate (the registry reads it), then the app."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        app = web.Application()
        app.router.add_get("/token", self._handle)
        return app

    # -- the endpoint -----------------------------------------------------------------------

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self._requests.append(entry)

    def _caller(self, request: web.Request) -> tuple[str | None, bool]:
        """(user, ok): None for anonymous; ok is False for bad or unknown credentials."""
        header = request.headers.get("Authorization")
        if header is None:
            return None, True
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, False
        known = self.users.get(user)
        return user, known is not None and secrets.compare_digest(known, password)

    async def _handle(self, request: web.Request) -> web.Response:
        service = request.query.get("service")
        scopes = tuple(request.query.getall("scope", []))
        user, ok = self._caller(request)
        if not ok:
            self._record(TokenRequest(user, service, scopes, 401))
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]},
                status=401,
            )
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            asked = [a for a in actions.split(",") if a]
            granted = asked if user is not None else [a for a in asked if a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": service or self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = jwt.encode(claims, self._key_pem, algorithm="RS256", headers={"x5c": [self._x5c]})
        self._record(TokenRequest(user, service, scopes, 200, token))
        reply: dict[str, object] = dict.fromkeys(self.token_fields, token)
        if self.expires_in is not None:
            reply["expires_in"] = self.expires_in
        return web.json_response(reply)
