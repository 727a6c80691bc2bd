"""The plugin contract: the only module a source plugin imports.

A *source* knows how to discover one distribution upstream. It is a class registered under the
`containerdisks.plugins` entry-point group (the built-in sources are registered the same way as
third-party ones) and is checked against this contract when loaded.

Decisions that shaped it:
- A catalog item names a source `kind` with parameters; the source validates them with its own
  pydantic model (`Params`), so a typo in the catalog is a clear configuration error before any
  network access.
- Discovery is one async call per catalog item that returns, per version and arch, everything
  the core needs to plan and publish (`Artifact`). Sources that discover their versions
  upstream (Fedora) return several `Release`s; the others return exactly one, for the
  catalog's version.
- Sources never do HTTP themselves: they get an `Upstream` that applies the mirror table, the
  per-pass cache, conditional requests, timeouts and retries. That keeps "one request per metadata
  URL per pass" a property of the core, not of each plugin.
- A problem with one arch is a value (`ArchError`), not an exception, so the core can report it per
  arch and never publish an index that lost an arch.
- Upstream strings are data, never structure. A source takes file names from upstream files only
  through `file_name_problem` (a plain name: no `/`, `\\`, `..`, control characters, at most
  255 bytes), builds a URL from one only through `url_in_directory` (the URL, resolved as a
  client or server would, stays in the directory it names), and runs a catalog regex against
  upstream names only through `NameMatcher` (the `regex` package with a time budget, in a worker
  thread, so a catastrophic pattern fails its arch in bounded time and never blocks the event
  loop). An `Artifact`'s URL is an absolute http(s) URL without whitespace or control characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import posixpath
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from containerdisks.checksums import (
    ChecksumFormat,
    ChecksumParseError,
    file_name_problem,
    parse_checksum_file,
)

__all__ = [
    "GOARCH",
    "MATCH_BUDGET",
    "Algorithm",
    "ArchContext",
    "ArchError",
    "Artifact",
    "ChecksumFormat",
    "ChecksumParseError",
    "Compression",
    "DiscoveryRequest",
    "Evidence",
    "NameMatcher",
    "Release",
    "SignaturePolicy",
    "Signed",
    "Source",
    "SourceError",
    "SourceParams",
    "Upstream",
    "UpstreamError",
    "check_placeholders",
    "file_name_problem",
    "parse_checksum_file",
    "render",
    "url_in_directory",
]

Algorithm = Literal["sha256", "sha512"]
#: A catalog entry's upstream signature policy: `required` (a good signature by a pinned key
#: of the distribution, or the arch fails) or `none` (the distribution signs nothing).
SignaturePolicy = Literal["required", "none"]
Compression = Literal["gzip", "xz"]

#: Upstream arch names (as in the catalog) to the Go/OCI names used in images.
GOARCH: Mapping[str, str] = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x"}

_HEX = {"sha256": 64, "sha512": 128}

P = TypeVar("P", bound="SourceParams")


class SourceError(Exception):
    """Discovery failed for a reason the user must read: one line, naming the URL or the data."""


class UpstreamError(SourceError):
    """An upstream HTTP request failed (after retries): status or transport error, with the URL.

    `url` is the canonical URL; `mirror`, the URL actually requested when the mirror table
    rewrote it, is named after the reason (`<url>: <reason> (mirror <mirror>)`), so that the
    line still starts with the canonical URL."""

    def __init__(
        self, url: str, reason: str, *, status: int | None = None, mirror: str | None = None
    ) -> None:
        via = "" if mirror is None or mirror == url else f" (mirror {mirror})"
        super().__init__(f"{url}: {reason}{via}")
        self.url = url
        self.reason = reason
        self.status = status
        self.mirror = mirror


@dataclass(frozen=True)
class Evidence:
    """What vouches for an artifact's checksum beyond HTTPS to the upstream host.

    `openpgp`: the checksum was read from data signed by a pinned key of the distribution;
    `fingerprint` is that key's primary fingerprint (uppercase hex), `signed_at` the signature
    time (RFC 3339, UTC), `signed_url` the canonical URL of the signed file. `tls-only`: the
    distribution signs nothing (or the catalog says `signature: none`); the others are None.
    """

    method: Literal["openpgp", "tls-only"]
    fingerprint: str | None = None
    signed_at: str | None = None
    signed_url: str | None = None


@dataclass(frozen=True)
class Signed:
    """A signed upstream file, verified: its signed text only (for a clearsigned file, what the
    signature covers; lines around the armour are gone) and what vouches for it."""

    text: str
    evidence: Evidence


@dataclass(frozen=True)
class Artifact:
    """One arch of one release as published upstream: what to download and how to verify it.

    `size` is the download's size in bytes when the upstream metadata declares one (Fedora's
    releases.json does): a download that is larger is refused, as one over `max_image_bytes` is.
    `evidence` says what vouches for `checksum` (an OpenPGP signature, or TLS only).
    """

    arch: str
    url: str
    checksum: str
    algorithm: Algorithm = "sha256"
    compression: Compression | None = None
    unique_tags: tuple[str, ...] = ()
    size: int | None = None
    evidence: Evidence = Evidence("tls-only")

    def __post_init__(self) -> None:
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise SourceError(f"{self.url}: declared size {self.size!r} is not a byte count")
        problem = _url_problem(self.url)
        if problem is not None:
            raise SourceError(f"{self.url!r}: download URL {problem}")
        want = _HEX[self.algorithm]
        if len(self.checksum) != want or not re.fullmatch(r"[0-9a-f]+", self.checksum):
            raise SourceError(
                f"{self.url}: checksum {self.checksum!r} is not {want} lowercase hex digits "
                f"({self.algorithm})"
            )


_UNSAFE_URL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def _url_problem(url: str) -> str | None:
    if not isinstance(url, str) or _UNSAFE_URL.search(url):
        return "contains whitespace or a control character"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http(s) URL"
    return None


def url_in_directory(directory: str, url: str) -> str:
    """`url`, when it stays under `directory` (a URL ending in `/`); else `SourceError`.

    Both are resolved as a client or a server may: percent-decoded (`%2e%2e`, `%2f`), then
    `.`/`..` segments removed. The scheme and host must be the directory's, and the URL may
    carry no query or fragment: a name from upstream never picks another place to download.
    """
    base, target = urlsplit(directory), urlsplit(url)
    why = _url_problem(url)
    if why is None and (target.scheme, target.netloc) != (base.scheme, base.netloc):
        why = "is on another host"
    if why is None and ("?" in url or "#" in url):
        why = "has a query or fragment"
    if why is None:
        root = _resolved(base.path[: base.path.rfind("/") + 1])
        path = _resolved(target.path)
        if not (path.startswith(root.rstrip("/") + "/") and path != root):
            why = "leaves the directory"
    if why is not None:
        raise SourceError(f"{url!r}: URL built from an upstream name {why} {directory!r}")
    return url


def _resolved(path: str) -> str:
    """A URL path as a server may map it: decoded, `.`/`..` removed (never above `/`)."""
    decoded = unquote(unquote(path)).replace("\\", "/")
    normal = posixpath.normpath("/" + decoded)
    return "/" + normal.lstrip("/") + ("/" if decoded.endswith("/") and normal != "/" else "")


#: Seconds a catalog regex may spend on the names of one upstream file, in all.
MATCH_BUDGET = 2.0


class NameMatcher:
    """A catalog regex matched against upstream names with a time budget, off the event loop.

    The pattern is compiled by the `regex` package (its default syntax is `re`'s); matching runs
    in a daemon thread that releases the GIL (`concurrent=True`) with `timeout=` the budget left
    (the package counts CPU time), so `(a|a)+$` on a long name fails after about `budget` seconds
    while the event loop, the daemon's `/healthz` and its signal handling go on. The thread is a
    daemon thread: a process told to stop does not wait for a match to give up.
    Raises `ValueError` for an invalid pattern.
    """

    def __init__(self, pattern: str, *, budget: float = MATCH_BUDGET) -> None:
        import regex  # noqa: PLC0415 - ~20 ms to import: only for a catalog that matches names

        try:
            self._compiled = regex.compile(pattern)
        except (regex.error, TypeError) as e:
            raise ValueError(f"{pattern!r} is not a valid regex: {e}") from None
        self.pattern = pattern
        self.budget = budget

    @property
    def groupindex(self) -> Mapping[str, int]:
        return self._compiled.groupindex

    async def fullmatches(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """`name -> named groups` (None as "") of every name the pattern fully matches.

        Raises `SourceError` when the budget runs out, naming the pattern."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, dict[str, str]]] = loop.create_future()
        todo = list(names)

        def work() -> None:
            try:
                found = self._fullmatches(todo)
            except BaseException as e:  # handed to the awaiting task
                settle = functools.partial(_set_exception, future, e)
            else:
                settle = functools.partial(_set_result, future, found)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle)

        threading.Thread(target=work, name="name-matcher", daemon=True).start()
        return await future

    def _fullmatches(self, names: list[str]) -> dict[str, dict[str, str]]:
        deadline = time.monotonic() + self.budget
        out: dict[str, dict[str, str]] = {}
        try:
            for name in names:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                m = self._compiled.fullmatch(name, timeout=left, concurrent=True)
                if m is not None:
                    out[name] = {k: v or "" for k, v in m.groupdict().items()}
        except TimeoutError:
            raise SourceError(
                f"match '{self.pattern}' took longer than {self.budget:g} s on the upstream names"
            ) from None
        return out


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


@dataclass(frozen=True)
class ArchError:
    """Discovery of one arch failed; the entry waits (fails) rather than lose the arch."""

    arch: str
    message: str


@dataclass(frozen=True)
class Release:
    """One version of one catalog item, with one result per requested arch (catalog order).

    A version-discovering source lists only the requested arches that version has upstream
    (still in catalog order): a distribution may publish a version without some arch.
    `newest_stable` lets a version-discovering source say which release may carry `latest`
    and the docs; the catalog decides whether it does.
    """

    version: str
    artifacts: tuple[Artifact | ArchError, ...]
    newest_stable: bool = False


@dataclass(frozen=True)
class ArchContext:
    """Values a source may substitute into its per-arch parameters (see `render`)."""

    name: str
    version: str | None
    arch: str

    @property
    def goarch(self) -> str:
        return GOARCH[self.arch]

    def values(self, **extra: str) -> dict[str, str]:
        out = {"name": self.name, "arch": self.arch, "goarch": self.goarch}
        if self.version is not None:
            out["version"] = self.version
        out.update(extra)
        return out


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def render(template: str, values: Mapping[str, str], *, regex: bool = False) -> str:
    """Replace `{name}` placeholders that `values` knows; leave every other brace alone.

    Regexes in the catalog keep quantifiers like `\\d{2}`; with `regex=True` substituted values
    are escaped so that an arch like `x86_64` matches itself literally.
    """

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            return m.group(0)
        return re.escape(values[key]) if regex else values[key]

    return _PLACEHOLDER.sub(sub, template)


#: Anything that looks like a placeholder (`{name}`; not a quantifier like `{2}`).
_ANY_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


def check_placeholders(field: str, template: str, known: Iterable[str], hint: str = "") -> None:
    """Raise `ValueError` (for a params validator) if `template` uses a placeholder not `known`.

    `render` leaves unknown placeholders as they are, so a typo like `{vesion}` would otherwise
    reach upstream as a literal URL; sources check their templates when the catalog is loaded.
    """
    allowed = set(known)
    for m in _ANY_PLACEHOLDER.finditer(template):
        if m.group(1) not in allowed:
            names = ", ".join("{" + k + "}" for k in sorted(allowed))
            more = f"; {hint}" if hint else ""
            raise ValueError(
                f"{field} uses unknown placeholder {m.group(0)} (known: {names}{more})"
            )


@dataclass(frozen=True)
class DiscoveryRequest:
    """What the core asks a source: a catalog item's name, version (None when the source
    discovers versions) and arches, with the source parameters already merged per arch."""

    name: str
    version: str | None
    arches: tuple[str, ...]
    params: Mapping[str, SourceParams] = field(default_factory=dict)
    #: `required`: read checksums only through `Upstream.fetch_signed`, with the keyring the
    #: parameters name (`SourceParams.signing_keys`); `none`: plain reads, `Evidence("tls-only")`.
    signature: SignaturePolicy = "none"

    def context(self, arch: str) -> ArchContext:
        return ArchContext(name=self.name, version=self.version, arch=arch)

    def params_for(self, arch: str, kind: type[P]) -> P:
        """`arch`'s parameters as the source's `kind`; its defaults when the catalog gives none
        and `kind` has defaults for every field."""
        p = self.params.get(arch)
        if p is None:
            try:
                return kind()
            except ValidationError:
                raise SourceError(f"{self.name}: no {kind.__name__} for {arch}") from None
        if not isinstance(p, kind):
            raise SourceError(f"{self.name}: {type(p).__name__} for {arch}, not {kind.__name__}")
        return p


class Upstream(Protocol):
    """HTTP for sources, provided by the core. Every URL is the canonical upstream URL; the core
    applies the mirror table. Failures raise `UpstreamError` naming the canonical URL."""

    async def get_bytes(self, url: str) -> bytes: ...

    async def get_text(self, url: str) -> str: ...

    async def get_json(self, url: str) -> Any: ...

    async def get_checksums(self, url: str, fmt: ChecksumFormat) -> Mapping[str, str]:
        """Fetch and parse a checksum file (`name -> lowercase hex`)."""
        ...

    async def fetch_signed(
        self, url: str, *, signature_url: str | None = None, keyring: str
    ) -> Signed:
        """Fetch `url` and verify it against the pinned keyring named `keyring`: clearsigned when
        `signature_url` is None, else detached by the signature there. Returns the signed text
        only; raises `SourceError` (one line naming the file and the status) when no good
        signature by a pinned key covers it."""
        ...


class SourceParams(BaseModel):
    """Base of every source's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def signing_keys(self) -> str | None:
        """The keyring (template) these parameters name for upstream signatures; None when the
        distribution signs nothing. The catalog's `signature` policy defaults to `required`
        when this is set, `none` otherwise."""
        return None


class Source(ABC):
    """A discovery plugin. Subclasses set `kind`, `Params`, and implement `discover`."""

    #: The `kind` the catalog uses to select this source.
    kind: ClassVar[str]
    #: The pydantic model of this source's catalog parameters.
    Params: ClassVar[type[SourceParams]]
    #: True when the source discovers versions upstream (the catalog item has no version).
    discovers_versions: ClassVar[bool] = False

    @abstractmethod
    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        """Read upstream metadata and return the releases with one result per requested arch.

        Raise `SourceError` when nothing can be discovered (metadata unreachable or malformed);
        return `ArchError` for an arch that is missing or unverifiable.
        """

    def describe(self, request: DiscoveryRequest) -> dict[str, Any]:
        """The source's rules for `containerdisks catalog`, without touching the network."""
        first = request.arches[0] if request.arches else None
        params = request.params.get(first) if first else None
        return {"kind": self.kind, **(params.model_dump(mode="json") if params else {})}
