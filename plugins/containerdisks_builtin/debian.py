"""Debian: the genericcloud qcow2 of one release, from the per-image JSON Debian publishes.

One job: for each arch of a `debian:<version>` entry, read
`https://cloud.debian.org/images/cloud/<codename>/latest/debian-<version>-genericcloud-<goarch>.json`
(a `kind: List` of a `Build` item and one `Upload` item per image format) and turn its qcow2
upload into an `Artifact`: the sha512 from `metadata.annotations["cloud.debian.org/digest"]`
(`sha512:<unpadded standard base64>`, re-encoded as hex), the unique tag
`<version>-<metadata.labels["cloud.debian.org/version"]>` (`13-20250814-2204`), and the download
URL.

Decisions that shaped it:
- The download is the versioned file the qcow2 item's `data.ref` names
  (`trixie/20250814-2204/debian-13-genericcloud-amd64-20250814-2204.qcow2`, relative to
  `https://cloud.debian.org/images/cloud/`), not the moving `latest/` file medius downloaded: a
  release landing between reading the JSON and downloading cannot give a checksum mismatch, and the
  `org.opencontainers.image.source` label names the exact file (docs/architecture.md, "Deliberate
  differences from medius"). A `data.ref` that is not a plain relative path (each segment a plain
  file name, `api.file_name_problem`) is refused, and the URL must stay under `download_base`
  (`api.url_in_directory`), so the JSON cannot send the download elsewhere.
- Versions map to codenames through a parameter (`codenames`, default 11/12/13 ->
  bullseye/bookworm/trixie): a new Debian release is a catalog change, not a code change. A
  version without a codename fails the entry (medius: "can't understand provided version").
- The first item whose `upload.cloud.debian.org/image-format` label is `qcow2` wins, as in
  medius; other items (Build, raw, internal tar.xz) and items of another shape are skipped.
- Every problem is per arch and one line naming the URL and the reason (`ArchError`): the JSON
  unreachable or malformed, no qcow2 item, a digest that is not sha512 base64, a missing
  version label or `data.ref`, an invalid tag.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from containerdisks.api import (
    GOARCH,
    ArchError,
    Artifact,
    DiscoveryRequest,
    Release,
    Source,
    SourceError,
    SourceParams,
    Upstream,
    check_placeholders,
    file_name_problem,
    render,
    url_in_directory,
)

__all__ = ["DebianParams", "DebianSource", "sha512_hex"]

FORMAT_LABEL = "upload.cloud.debian.org/image-format"
VERSION_LABEL = "cloud.debian.org/version"
DIGEST_ANNOTATION = "cloud.debian.org/digest"

_URL_VALUES = frozenset({"name", "version", "arch", "goarch", "codename"})
#: A valid image tag (the OCI distribution spec's rule).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
#: A relative path of plain segments: no scheme, no leading `/`, no query, no whitespace.
_REF = re.compile(r"[A-Za-z0-9._~+-]+(?:/[A-Za-z0-9._~+-]+)*")


class DebianParams(SourceParams):
    """Catalog parameters of the `debian` source."""

    codenames: dict[str, str] = Field(
        default={"11": "bullseye", "12": "bookworm", "13": "trixie"},
        description="Version -> codename, used in the metadata URL.",
    )
    url: str = Field(
        default="https://cloud.debian.org/images/cloud/{codename}/latest/"
        "debian-{version}-genericcloud-{goarch}.json",
        description="Template of the per-image JSON's canonical URL; may use `{codename}`.",
    )
    download_base: str = Field(
        default="https://cloud.debian.org/images/cloud/",
        description="URL the qcow2 item's `data.ref` is relative to.",
    )
    image_format: str = Field(
        default="qcow2", description="`upload.cloud.debian.org/image-format` label to select."
    )

    @field_validator("codenames", mode="before")
    @classmethod
    def _keys_are_versions(cls, value: Any) -> Any:
        # YAML reads `{13: trixie}` with an integer key; versions are strings.
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _templates(self) -> DebianParams:
        check_placeholders("url", self.url, _URL_VALUES)
        if not self.download_base.endswith("/"):
            raise ValueError(f"download_base {self.download_base!r} must end with '/'")
        return self


def sha512_hex(digest: str) -> str:
    """`sha512:<unpadded base64>` -> 128 lowercase hex digits; ValueError saying why not."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or algorithm != "sha512":
        raise ValueError(f"digest {digest!r} is not sha512:<base64>")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"digest {digest!r} is not valid base64") from None
    if len(raw) != 64:
        raise ValueError(f"digest {digest!r} decodes to {len(raw)} bytes, not 64 (sha512)")
    return raw.hex()


def _at(data: Any, *keys: str) -> Any:
    """`data[k1][k2]...`, or None where an object or key is missing."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


class DebianSource(Source):
    """Discovers one Debian version's genericcloud qcow2 images from their JSON metadata."""

    kind: ClassVar[str] = "debian"
    Params: ClassVar[type[SourceParams]] = DebianParams

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        version = request.version
        if version is None:
            raise SourceError(f"{request.name}: the debian source needs a version")
        for arch in request.arches:
            codenames = request.params_for(arch, DebianParams).codenames
            if version not in codenames:
                known = ", ".join(sorted(codenames)) or "none"
                raise SourceError(
                    f"{request.name}:{version}: no Debian codename for version {version!r} "
                    f"(codenames: {known})"
                )
        results = await asyncio.gather(
            *(self._arch(request, version, arch, upstream) for arch in request.arches)
        )
        return [Release(version=version, artifacts=tuple(results))]

    async def _arch(
        self, request: DiscoveryRequest, version: str, arch: str, upstream: Upstream
    ) -> Artifact | ArchError:
        if arch not in GOARCH:
            return ArchError(arch, f"unknown arch {arch!r}")
        p = request.params_for(arch, DebianParams)
        url = render(p.url, request.context(arch).values(codename=p.codenames[version]))
        try:
            document = await upstream.get_json(url)
        except SourceError as e:
            return ArchError(arch, str(e))
        try:
            return _artifact(document, version, arch, p)
        except (ValueError, SourceError) as e:
            return ArchError(arch, f"{url}: {e}")

    def describe(self, request: DiscoveryRequest) -> dict[str, Any]:
        return {
            **super().describe(request),
            "unique_tag": "{version}-<" + VERSION_LABEL + " label>",
            "rules": [
                f"first item labelled {FORMAT_LABEL}=<image_format>",
                f"sha512 from the {DIGEST_ANNOTATION} annotation (base64)",
                "download: download_base + the item's data.ref (versioned, not latest/)",
            ],
        }


def _artifact(document: Any, version: str, arch: str, p: DebianParams) -> Artifact:
    items = _at(document, "items")
    if not isinstance(items, list):
        raise ValueError("malformed image metadata: expected an object with an 'items' array")
    item = next(
        (i for i in items if _at(i, "metadata", "labels", FORMAT_LABEL) == p.image_format), None
    )
    if item is None:
        raise ValueError(f"no item labelled {FORMAT_LABEL}={p.image_format}")
    what = f"the {p.image_format} item"
    digest = _at(item, "metadata", "annotations", DIGEST_ANNOTATION)
    if not isinstance(digest, str):
        raise ValueError(f"{what} has no {DIGEST_ANNOTATION} annotation")
    checksum = sha512_hex(digest)
    label = _at(item, "metadata", "labels", VERSION_LABEL)
    if not isinstance(label, str) or not label:
        raise ValueError(f"{what} has no {VERSION_LABEL} label")
    tag = f"{version}-{label}"
    if not _TAG.fullmatch(tag):
        raise ValueError(f"unique tag {tag!r} (from the {VERSION_LABEL} label) is not a valid tag")
    ref = _at(item, "data", "ref")
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"{what} has no data.ref")
    if not _REF.fullmatch(ref) or any(file_name_problem(part) for part in ref.split("/")):
        raise ValueError(f"{what} has data.ref {ref!r}, not a relative path")
    url = url_in_directory(p.download_base, p.download_base + ref)
    return Artifact(
        arch=arch,
        url=url,
        checksum=checksum,
        algorithm="sha512",
        unique_tags=(tag,),
    )
