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
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from containerdisks.checksums import ChecksumFormat, ChecksumParseError, parse_checksum_file

__all__ = [
    "GOARCH",
    "Algorithm",
    "ArchContext",
    "ArchError",
    "Artifact",
    "ChecksumFormat",
    "ChecksumParseError",
    "Compression",
    "DiscoveryRequest",
    "Release",
    "Source",
    "SourceError",
    "SourceParams",
    "Upstream",
    "UpstreamError",
    "check_placeholders",
    "parse_checksum_file",
    "render",
]

Algorithm = Literal["sha256", "sha512"]
Compression = Literal["gzip", "xz"]

#: Upstream arch names (as in the catalog) to the Go/OCI names used in images.
GOARCH: Mapping[str, str] = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x"}

_HEX = {"sha256": 64, "sha512": 128}

P = TypeVar("P", bound="SourceParams")


class SourceError(Exception):
    """Discovery failed for a reason the user must read: one line, naming the URL or the data."""


class UpstreamError(SourceError):
    """An upstream HTTP request failed (after retries): status or transport error, with the URL."""

    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Artifact:
    """One arch of one release as published upstream: what to download and how to verify it.

    `size` is the download's size in bytes when the upstream metadata declares one (Fedora's
    releases.json does): a download that is larger is refused, as one over `max_image_bytes` is.
    """

    arch: str
    url: str
    checksum: str
    algorithm: Algorithm = "sha256"
    compression: Compression | None = None
    unique_tags: tuple[str, ...] = ()
    size: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise SourceError(f"{self.url}: declared size {self.size!r} is not a byte count")
        want = _HEX[self.algorithm]
        if len(self.checksum) != want or not re.fullmatch(r"[0-9a-f]+", self.checksum):
            raise SourceError(
                f"{self.url}: checksum {self.checksum!r} is not {want} lowercase hex digits "
                f"({self.algorithm})"
            )


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


class SourceParams(BaseModel):
    """Base of every source's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
