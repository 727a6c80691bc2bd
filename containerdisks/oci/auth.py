"""Registry authentication as a sans-I/O flow: a generator that yields requests, receives responses.

Decision: the challenge → token → retry dance is written as a generator (as httpx's ``_auth.py``)
and never touches the network itself, so every branch (anonymous, Basic, Bearer with scopes,
token reuse and expiry, OAuth2 with identity tokens, refused credentials) is unit-tested by
stepping it by hand, and the client that drives it owns all I/O and error mapping.

What it does (distribution ``docs/spec/auth/{token,oauth,scope}.md``, RFC 6750 §3):

- It remembers the last challenge a registry sent (the client's ``/v2/`` ping seeds it), so once
  a registry is known to want Bearer tokens, a token for the request's scopes is fetched *before*
  the request, not after a wasted 401.
- Basic challenge: send Basic credentials on every request when there are any.
- Bearer challenge: ``GET <realm>?service=..&scope=..`` (Basic credentials when there are any,
  anonymous otherwise); with an identity token, first the OAuth2 ``POST <realm>`` form
  (``grant_type=refresh_token``, scopes space-separated), falling back to the GET on 404/405;
  with a ready registry token, no fetch at all. ``token`` or ``access_token``; ``expires_in``
  defaults to 60 s and is never taken as less.
- Scopes are normalised and merged per resource (``repository:a:push,pull`` and
  ``repository:a:pull`` are ``repository:a:pull,push``); a write asks for
  ``repository:<name>:pull,push``, a cross-repository mount adds ``repository:<from>:pull`` to
  the same token. Tokens are reused per (host, scope set) until shortly before expiry, and a
  cached token whose scopes cover a request's serves it too (a push token serves the HEADs).
- A 401 to a token the registry accepted before drops it and fetches one new token; a 401 to a
  token it never accepted (just fetched) is final (fail fast: retrying a refused fresh token only
  hides the real error). A challenge naming a new scope puts it first (some registries read only
  the first scope); the token fetched for the merged scopes covers the scopes asked for.

- A Bearer realm on plain ``http://`` for a registry that challenged over ``https://`` is
  refused (its tokens, and our Basic credentials, would cross the network in clear text) unless
  the authenticator is told to allow it (``insecure_skip_tls``).

Secrets never appear in a ``repr``, a log line or an error message: credentials register theirs
with :mod:`.redact` when they are made, and every token a token service hands out is registered
before it is used.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field

import yarl

from containerdisks.oci import redact, safejson
from containerdisks.oci.errors import ProtocolError, error_from_response, one_line
from containerdisks.oci.messages import Purpose, Request, Response, safe_url

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "OAUTH_CLIENT_ID",
    "REFRESH_MARGIN",
    "AuthFlow",
    "Authenticator",
    "Challenge",
    "Credentials",
    "TokenCache",
    "basic_authorization",
    "merge_scopes",
    "parse_www_authenticate",
    "pull_scope",
    "push_scope",
    "select_challenge",
]

#: Lifetime assumed when a token reply has no (or a smaller) ``expires_in`` (token.md).
DEFAULT_TOKEN_LIFETIME = 60.0
#: A cached token is replaced this many seconds before it expires.
REFRESH_MARGIN = 10.0
#: ``client_id`` of the OAuth2 token request (oauth.md requires one; any name will do).
OAUTH_CLIENT_ID = "containerdisks"

#: What :meth:`Authenticator.flow` is: yields requests, receives their responses.
AuthFlow = Generator[Request, Response, None]

Clock = Callable[[], float]


@dataclass(frozen=True, repr=False)
class Credentials:
    """What proves who we are to one registry. No secret ever shows in ``repr`` or ``str``.

    - ``username`` + ``password``: Basic auth, and Basic auth at the token service;
    - ``identity_token``: an OAuth2 refresh token (docker's ``identitytoken``, or a credential
      helper's answer with user ``<token>``), traded for access tokens by ``POST <realm>``;
    - ``registry_token``: a ready Bearer token (docker's ``registrytoken``), sent as it is;
    - ``source``: where they came from (a file, a helper), for messages; not a secret.
    """

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        for secret in (self.password, self.identity_token, self.registry_token):
            redact.register(secret)
        if self.has_basic:
            redact.register(f"{self.username}:{self.password}")  # its base64 is the header

    @property
    def has_basic(self) -> bool:
        """Whether there is a username and password to send as Basic auth."""
        return bool(self.username and self.password)

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}"]
        parts.extend(
            f"{name}='***'"
            for name in ("password", "identity_token", "registry_token")
            if getattr(self, name)
        )
        if self.source:
            parts.append(f"source={self.source!r}")
        return f"Credentials({', '.join(parts)})"

    __str__ = __repr__


def basic_authorization(credentials: Credentials) -> str:
    """The ``Authorization`` header value for Basic auth (UTF-8, as docker sends it)."""
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def pull_scope(repository: str) -> str:
    """The token scope that allows reading ``repository``."""
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    """The token scope that allows writing ``repository`` (a push reads too: HEAD, mount)."""
    return f"repository:{repository}:pull,push"


def delete_scope(repository: str) -> str:
    """The token scope that allows deleting manifests of ``repository`` (distribution asks
    ``delete``; Quay decides by ``push``, so both are asked for)."""
    return f"repository:{repository}:pull,push,delete"


_ACTION_ORDER = {"pull": 0, "push": 1, "delete": 2, "*": 3}


def _split_scope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """(type, name, actions) of ``type:name:a,b``; None when it does not have that shape."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (kind and sep and name and sep2):
        return None
    return kind, name, tuple(a for a in actions.split(",") if a)


def merge_scopes(*groups: Iterable[str]) -> tuple[str, ...]:
    """The scopes of all ``groups``, resources in first-seen order, each resource's actions joined.

    ``merge_scopes(["repository:a:push,pull"], ["repository:a:pull", "repository:b:pull"])``
    is ``("repository:a:pull,push", "repository:b:pull")``. Scopes of another shape are kept
    as they are.
    """
    merged: dict[tuple[str, str], set[str] | None] = {}
    for group in groups:
        for scope in group:
            parts = _split_scope(scope)
            if parts is None:
                merged.setdefault(("", scope), None)
                continue
            have = merged.setdefault((parts[0], parts[1]), set())
            assert have is not None
            have.update(parts[2])
    result: list[str] = []
    for (kind, name), actions in merged.items():
        if actions is None:
            result.append(name)
        else:
            ordered = sorted(actions, key=lambda a: (_ACTION_ORDER.get(a, 9), a))
            result.append(f"{kind}:{name}:{','.join(ordered)}")
    return tuple(result)


def _covers(have: frozenset[str], want: Iterable[str]) -> bool:
    """Whether a token granted for the scopes ``have`` allows every scope in ``want``."""
    granted: dict[tuple[str, str], set[str]] = {}
    for scope in have:
        parts = _split_scope(scope)
        if parts is not None:
            granted.setdefault((parts[0], parts[1]), set()).update(parts[2])
    for scope in want:
        parts = _split_scope(scope)
        if parts is None:
            if scope not in have:
                return False
            continue
        actions = granted.get((parts[0], parts[1]))
        if actions is None or not ("*" in actions or set(parts[2]) <= actions):
            return False
    return True


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lowercased scheme and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes the challenge names (space-separated in one ``scope`` parameter)."""
        return tuple(self.params.get("scope", "").split())


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = _TCHAR | frozenset("/=")


class _Scanner:
    """A cursor over one header value for the RFC 7235 challenge grammar."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self, chars: frozenset[str] = _TCHAR) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
        return self.text[start : self.pos]

    def bare(self) -> str:
        """An unquoted value, leniently up to the next comma or space (some servers send URLs)."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ", \t":
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string starting at the opening quote; backslash escapes one character."""
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif char == '"':
                break
            else:
                out.append(char)
        return "".join(out)

    def is_param_ahead(self) -> bool:
        """Whether ``token =`` follows (a parameter), rather than a new challenge's scheme."""
        saved = self.pos
        self.skip_space()
        name = self.token()
        self.skip_space()
        ahead = bool(name) and self.peek() == "="
        self.pos = saved
        return ahead


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse one ``WWW-Authenticate`` header value into its challenges.

    Handles several challenges in one value, quoted values with commas and escapes
    (``scope="repository:a/b:pull,push"``), unquoted values, and token68 credentials.
    Malformed trailing input is ignored rather than raised: a registry's odd header should
    not hide the status it came with.
    """
    scanner = _Scanner(value)
    challenges: list[Challenge] = []
    while True:
        while scanner.peek() in {" ", "\t", ","}:
            scanner.pos += 1
        scheme = scanner.token()
        if not scheme:
            break
        params: dict[str, str] = {}
        scanner.skip_space()
        if not scanner.is_param_ahead():
            token68 = scanner.token(_TOKEN68)
            if token68:
                params[""] = token68
        while scanner.is_param_ahead():
            scanner.skip_space()
            name = scanner.token().lower()
            scanner.skip_space()
            scanner.pos += 1  # the "="
            scanner.skip_space()
            params[name] = scanner.quoted() if scanner.peek() == '"' else scanner.bare()
            scanner.skip_space()
            if scanner.peek() != ",":
                break
            scanner.pos += 1
        challenges.append(Challenge(scheme.lower(), params))
        scanner.skip_space()
        if scanner.peek() not in {",", ""} and not scanner.peek().isalnum():
            break
    return challenges


def select_challenge(values: Iterable[str]) -> Challenge | None:
    """The challenge to answer among all ``WWW-Authenticate`` values: Bearer, else Basic."""
    found = [c for value in values for c in parse_www_authenticate(value)]
    for scheme in ("bearer", "basic"):
        for challenge in found:
            if challenge.scheme == scheme:
                return challenge
    return None


@dataclass
class _Token:
    value: str = field(repr=False)
    expires_at: float
    proven: bool = False  # the registry has accepted it at least once


class TokenCache:
    """Bearer tokens per (registry host, scope set), valid until shortly before they expire.

    A token asked for more than a request needs serves it too: the push token of a repository
    answers its HEADs, the token of a mount answers later pushes to the target.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, frozenset[str]], _Token] = {}

    def _fresh(self, token: _Token) -> bool:
        return self._clock() < token.expires_at - REFRESH_MARGIN

    def get(self, host: str, scopes: Iterable[str]) -> str | None:
        """A token good for ``scopes`` for at least :data:`REFRESH_MARGIN` seconds, or None.

        The token fetched for exactly these scopes when there is one, else any fresh token of
        this host whose scopes cover them.
        """
        wanted = merge_scopes(scopes)
        token = self._tokens.get((host, frozenset(wanted)))
        if token is not None and self._fresh(token):
            return token.value
        for (owner, granted), other in self._tokens.items():
            if owner == host and self._fresh(other) and _covers(granted, wanted):
                return other.value
        return None

    def put(self, host: str, scopes: Iterable[str], value: str, lifetime: float) -> None:
        """Remember ``value`` for ``lifetime`` seconds from now."""
        key = (host, frozenset(merge_scopes(scopes)))
        self._tokens[key] = _Token(value, self._clock() + lifetime)

    def drop(self, host: str, scopes: Iterable[str]) -> None:
        """Forget the token for this scope set."""
        self._tokens.pop((host, frozenset(merge_scopes(scopes))), None)

    def proven(self, host: str, value: str) -> bool:
        """Whether the registry has accepted ``value`` before (see :meth:`prove`)."""
        return any(k[0] == host and t.value == value and t.proven for k, t in self._tokens.items())

    def prove(self, host: str, value: str) -> None:
        """Record that the registry accepted ``value``: a later 401 to it is worth a refresh,
        whereas a 401 to a token never accepted is final."""
        for (owner, _), token in self._tokens.items():
            if owner == host and token.value == value:
                token.proven = True

    def forget(self, host: str, value: str) -> None:
        """Forget every entry holding the token ``value`` (the registry refused it)."""
        for key in [k for k, t in self._tokens.items() if k[0] == host and t.value == value]:
            del self._tokens[key]

    def clear(self, host: str) -> None:
        """Forget every token of ``host`` (its credentials changed)."""
        for key in [k for k in self._tokens if k[0] == host]:
            del self._tokens[key]

    def __repr__(self) -> str:
        return f"<TokenCache {len(self._tokens)} tokens>"


class Authenticator:
    """Authentication state for one registry host: its challenge, credentials and tokens."""

    def __init__(
        self,
        host: str,
        credentials: Credentials | None = None,
        *,
        tokens: TokenCache | None = None,
        clock: Clock = time.monotonic,
        allow_http_realm: bool = False,
    ) -> None:
        self.host = host
        self._credentials = credentials
        self._identity_token = credentials.identity_token if credentials else ""
        self._tokens = tokens if tokens is not None else TokenCache(clock)
        self._challenge: Challenge | None = None
        self._challenged_over = ""  # the scheme of the response that carried the challenge
        self._allow_http_realm = allow_http_realm

    def __repr__(self) -> str:
        scheme = self._challenge.scheme if self._challenge else "unknown"
        anonymous = self._credentials is None
        return f"<Authenticator {self.host} scheme={scheme} anonymous={anonymous}>"

    @property
    def challenge(self) -> Challenge | None:
        """The last challenge this registry sent, if any."""
        return self._challenge

    @property
    def anonymous(self) -> bool:
        """Whether requests go without credentials of any kind."""
        return self._credentials is None

    def use_credentials(self, credentials: Credentials | None) -> bool:
        """Authenticate with ``credentials`` from now on (rotated ones, say); tokens obtained
        with the old ones are dropped. Returns whether anything changed."""
        if credentials == self._credentials:
            return False
        self._credentials = credentials
        self._identity_token = credentials.identity_token if credentials else ""
        self._tokens.clear(self.host)
        return True

    def observe(self, response: Response) -> Challenge | None:
        """Learn the registry's challenge from a 401 (e.g. the answer to ``GET /v2/``)."""
        if response.status != 401:
            return None
        challenge = select_challenge(response.header_all("WWW-Authenticate"))
        if challenge is not None:
            self._challenge = challenge
            self._challenged_over = response.url.scheme
        return challenge

    @property
    def _registry_token(self) -> str:
        return self._credentials.registry_token if self._credentials else ""

    def needs_token(self, scopes: Iterable[str]) -> bool:
        """Whether a request for ``scopes`` would first fetch a token (Bearer, none cached).

        Lets a caller make concurrent requests wait for one token fetch instead of each
        fetching its own (see :meth:`token_flow`).
        """
        challenge = self._challenge
        if challenge is None or challenge.scheme != "bearer" or self._registry_token:
            return False
        return self._tokens.get(self.host, scopes) is None

    def token_flow(self, scopes: Iterable[str]) -> AuthFlow:
        """Only fetch and cache a token for ``scopes``; yields the token request, if any."""
        challenge = self._challenge
        if challenge is not None and challenge.scheme == "bearer" and not self._registry_token:
            yield from self._fetch_token(challenge, merge_scopes(scopes))

    def flow(self, request: Request, scopes: Iterable[str] = ()) -> AuthFlow:
        """Send ``request`` authenticated for ``scopes``; the last response received is final."""
        wanted = merge_scopes(scopes)
        challenge = self._challenge
        sent_basic = False
        fresh = False
        token: str | None = None
        credentials = self._credentials
        if challenge is not None and challenge.scheme == "bearer":
            if self._registry_token:
                token, fresh = self._registry_token, True  # nothing to refresh it with
            else:
                token = self._tokens.get(self.host, wanted)
                if token is None:
                    token = yield from self._fetch_token(challenge, wanted)
                # a token the registry never accepted (fetched now, or just before by a
                # token_flow) is not refreshed when refused: a new one would be refused too
                fresh = not self._tokens.proven(self.host, token)
            response = yield request.with_header("Authorization", f"Bearer {token}")
        elif challenge is not None and challenge.scheme == "basic" and credentials is not None:
            sent_basic = credentials.has_basic
            response = yield self._with_basic(request)
        else:
            response = yield request
        if response.status != 401:
            if token is not None:
                self._tokens.prove(self.host, token)
            return
        new = self.observe(response)
        if new is None:
            return
        if new.scheme == "bearer":
            merged = merge_scopes(new.scopes, wanted)
            if self._registry_token or (fresh and frozenset(merged) == frozenset(wanted)):
                return  # a token fetched just now was refused: more tries will not help
            if token is not None:
                self._tokens.forget(self.host, token)
            token = yield from self._fetch_token(new, merged)
            final = yield request.with_header("Authorization", f"Bearer {token}")
            if final.status != 401:
                self._tokens.prove(self.host, token)
        elif new.scheme == "basic" and not sent_basic and credentials and credentials.has_basic:
            yield self._with_basic(request)

    def _with_basic(self, request: Request) -> Request:
        credentials = self._credentials
        if credentials is None or not credentials.has_basic:
            return request
        return request.with_header("Authorization", basic_authorization(credentials))

    def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...]
    ) -> Generator[Request, Response, str]:
        """Yield the token request(s), then cache and return the token from the response."""
        realm_text = challenge.params.get("realm", "")
        try:
            realm = yarl.URL(realm_text)
        except (ValueError, TypeError):
            realm = yarl.URL()
        if realm.scheme not in {"http", "https"} or not realm.host:
            raise ProtocolError(
                f"{self.host}: Bearer challenge with unusable realm {one_line(realm_text, 80)!r}"
            )
        downgrade = realm.scheme == "http" and self._challenged_over == "https"
        if downgrade and not self._allow_http_realm:
            raise ProtocolError(
                f"{self.host}: token realm {safe_url(realm)} is plain http for an https registry;"
                " refused (--insecure-skip-tls allows it)"
            )
        subject = f"token for {self.host} from {realm.host} ({' '.join(scopes) or 'no scope'})"
        service = challenge.params.get("service")
        if self._identity_token:
            form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", self._identity_token),
                ("client_id", OAUTH_CLIENT_ID),
            ]
            if service is not None:
                form.append(("service", service))
            if scopes:
                form.append(("scope", " ".join(scopes)))
            response = yield Request(
                "POST",
                realm,
                (("Content-Type", "application/x-www-form-urlencoded"),),
                Purpose.TOKEN,
                body=urllib.parse.urlencode(form).encode("ascii"),
            )
            if response.status not in {404, 405}:
                return self._accept_token(response, subject, scopes)
            # oauth.md: a realm that answers the POST with 404 only speaks the GET flow
        query: list[tuple[str, str]] = []
        if service is not None:
            query.append(("service", service))
        query.extend(("scope", scope) for scope in scopes)
        request = self._with_basic(Request("GET", realm.extend_query(query), purpose=Purpose.TOKEN))
        response = yield request
        return self._accept_token(response, subject, scopes)

    def _accept_token(self, response: Response, subject: str, scopes: tuple[str, ...]) -> str:
        if response.status != 200:
            raise error_from_response(
                subject,
                status=response.status,
                body=response.body,
                retry_after=response.header("Retry-After"),
            )
        value, lifetime, refresh = _parse_token_reply(response.body, subject)
        redact.register(value, expiring=True)
        redact.register(refresh)
        if refresh and self._identity_token:
            self._identity_token = refresh  # a rotated refresh token replaces the old one
        self._tokens.put(self.host, scopes, value, lifetime)
        return value


def _parse_token_reply(body: bytes, subject: str) -> tuple[str, float, str]:
    """(token, lifetime in seconds, refresh token or "") from a token service's JSON reply."""
    try:
        doc = safejson.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{subject}: reply is not JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{subject}: reply is not a JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{subject}: reply has no token")
    expires_in = doc.get("expires_in")
    lifetime = DEFAULT_TOKEN_LIFETIME
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        lifetime = max(DEFAULT_TOKEN_LIFETIME, float(expires_in))
    refresh = doc.get("refresh_token")
    return value, lifetime, refresh if isinstance(refresh, str) else ""
