"""The `static` source: an image whose URL and checksum the catalog itself gives.

One job: turn per-arch `url` and `checksum` parameters into `Artifact`s, asking upstream
nothing. It serves medius's generic, test-only cirros entry, whose URLs and sha256 values are
pinned in the catalog.

Decisions that shaped it:
- A checksum is required: the catalog pins bytes, so nothing unverified can be published.
  Its length and hex form are checked when the catalog is loaded (a configuration error, exit 2),
  not at discovery.
- Per-arch values come through the catalog's `per_arch` overrides, as for every source; the URL
  may use the usual placeholders (`{version}`, `{arch}`, `{goarch}`, `{name}`).
- No discovery request is made: a pinned image never changes, so planning it costs nothing
  upstream and a published image stays up to date for ever.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from containerdisks.api import (
    GOARCH,
    Algorithm,
    ArchError,
    Artifact,
    Compression,
    DiscoveryRequest,
    Release,
    Source,
    SourceError,
    SourceParams,
    Upstream,
    check_placeholders,
    render,
)

__all__ = ["StaticParams", "StaticSource"]

_HEX = {"sha256": 64, "sha512": 128}
_URL_VALUES = frozenset({"name", "version", "arch", "goarch"})


class StaticParams(SourceParams):
    """Catalog parameters of the `static` source (usually given per arch)."""

    url: str = Field(description="The image's canonical download URL (template).")
    checksum: str = Field(description="The image's checksum, lowercase hex.")
    algorithm: Algorithm = Field(default="sha256", description="Hash of `checksum`.")
    compression: Literal["gzip", "xz", "none", "auto"] = Field(
        default="auto", description="How the download is compressed; `auto`: from a .gz/.xz suffix."
    )

    @model_validator(mode="after")
    def _pinned(self) -> StaticParams:
        want = _HEX[self.algorithm]
        if len(self.checksum) != want or not re.fullmatch(r"[0-9a-f]+", self.checksum):
            raise ValueError(
                f"checksum {self.checksum!r} is not {want} lowercase hex digits ({self.algorithm})"
            )
        check_placeholders("url", self.url, _URL_VALUES)
        return self


class StaticSource(Source):
    """Publishes images pinned in the catalog; never asks upstream."""

    kind: ClassVar[str] = "static"
    Params: ClassVar[type[SourceParams]] = StaticParams

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        if request.version is None:
            raise SourceError(f"{request.name}: the static source needs a version")
        artifacts: list[Artifact | ArchError] = []
        for arch in request.arches:
            p = request.params_for(arch, StaticParams)
            if arch not in GOARCH:
                artifacts.append(ArchError(arch, f"unknown arch {arch!r}"))
                continue
            url = render(p.url, request.context(arch).values())
            artifacts.append(
                Artifact(
                    arch=arch,
                    url=url,
                    checksum=p.checksum,
                    algorithm=p.algorithm,
                    compression=_compression(p.compression, url),
                )
            )
        return [Release(version=request.version, artifacts=tuple(artifacts))]

    def describe(self, request: DiscoveryRequest) -> dict[str, Any]:
        return {**super().describe(request), "unique_tag": None}


def _compression(setting: str, url: str) -> Compression | None:
    if setting in ("gzip", "xz"):
        return "gzip" if setting == "gzip" else "xz"
    if setting == "none":
        return None
    path = urlsplit(url).path
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith(".xz"):
        return "xz"
    return None
