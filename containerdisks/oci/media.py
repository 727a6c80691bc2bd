"""The content vocabulary: media types, descriptors, platforms, and manifests as exact bytes.

Decision: a :class:`Manifest` is kept as the exact bytes the registry stored, with the digest of
those bytes, because digests are computed over bytes, not over parsed JSON; parsing into
descriptors is a separate, defensive step that raises :class:`InvalidManifestError` with a
one-line reason instead of ``KeyError``/``TypeError`` on a malformed document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from containerdisks.oci import safejson
from containerdisks.oci.digest import is_digest
from containerdisks.oci.errors import InvalidManifestError

__all__ = [
    "ACCEPT_MANIFESTS",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_MANIFEST_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "Descriptor",
    "ImageManifest",
    "Manifest",
    "Platform",
    "detect_media_type",
    "parse_image_manifest",
    "parse_index",
    "parse_json_object",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_MEDIA_TYPES = INDEX_MEDIA_TYPES | IMAGE_MANIFEST_MEDIA_TYPES

#: Every manifest type we handle. distribution 2.8 answers 404 for an OCI manifest unless its
#: type is listed, and Quay falls back to schema 1 without the v2/OCI types.
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or InvalidManifestError naming ``what``."""
    try:
        doc = safejson.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifestError(f"{what}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidManifestError(f"{what}: not a JSON object")
    return doc


@dataclass(frozen=True)
class Platform:
    """Where an image runs: ``os``/``architecture`` (GOARCH names) and an optional variant."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def from_json(cls, value: object) -> Platform | None:
        """The platform of an index entry, or None when absent or malformed."""
        if not isinstance(value, dict):
            return None
        os_, arch, variant = value.get("os"), value.get("architecture"), value.get("variant")
        if not isinstance(os_, str) or not isinstance(arch, str):
            return None
        return cls(os_, arch, variant if isinstance(variant, str) and variant else None)


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest and size, plus index-entry extras."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, value: object, what: str) -> Descriptor:
        """Parse one descriptor object; InvalidManifestError naming ``what`` if malformed."""
        if not isinstance(value, dict):
            raise InvalidManifestError(f"{what}: descriptor is not an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifestError(f"{what}: descriptor without mediaType")
        if not isinstance(digest, str) or not is_digest(digest):
            raise InvalidManifestError(f"{what}: descriptor with invalid digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifestError(f"{what}: descriptor with invalid size {size!r}")
        raw_annotations = value.get("annotations")
        annotations = (
            {k: v for k, v in raw_annotations.items() if isinstance(v, str)}
            if isinstance(raw_annotations, dict)
            else {}
        )
        return cls(media_type, digest, size, Platform.from_json(value.get("platform")), annotations)


@dataclass(frozen=True)
class Manifest:
    """A manifest or index exactly as stored: its media type, bytes, and the digest of the bytes."""

    media_type: str
    data: bytes = field(repr=False)
    digest: str

    @property
    def size(self) -> int:
        """Length of the bytes."""
        return len(self.data)

    @property
    def is_index(self) -> bool:
        """Whether this is an OCI index or a Docker manifest list."""
        return self.media_type in INDEX_MEDIA_TYPES

    def descriptor(self, platform: Platform | None = None) -> Descriptor:
        """A descriptor pointing at this manifest."""
        return Descriptor(self.media_type, self.digest, self.size, platform)


@dataclass(frozen=True)
class ImageManifest:
    """The parts of an image manifest we use: its config and layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


def detect_media_type(data: bytes, content_type: str | None, what: str) -> str:
    """The media type of a fetched manifest, from ``Content-Type`` and the document itself.

    The document's ``mediaType`` wins over a generic ``Content-Type``; when both name a
    manifest type and disagree, the manifest is refused (distribution-spec: reject a mismatch).
    """
    header = (content_type or "").split(";", 1)[0].strip().lower()
    doc = parse_json_object(data, what)
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        if header in MANIFEST_MEDIA_TYPES and declared != header:
            raise InvalidManifestError(
                f"{what}: Content-Type {header} does not match mediaType {declared}"
            )
        return declared
    if header and header not in {"application/json", "application/octet-stream", "text/plain"}:
        return header
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise InvalidManifestError(f"{what}: cannot tell the manifest's media type")


def parse_index(manifest: Manifest, what: str) -> list[Descriptor]:
    """The entries of an index or manifest list, in order."""
    if not manifest.is_index:
        raise InvalidManifestError(f"{what}: {manifest.media_type} is not an index")
    doc = parse_json_object(manifest.data, what)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise InvalidManifestError(f"{what}: index without a manifests list")
    return [Descriptor.from_json(entry, what) for entry in entries]


def parse_image_manifest(manifest: Manifest, what: str) -> ImageManifest:
    """The config and layers of an OCI image manifest or Docker schema 2 manifest."""
    if manifest.media_type not in IMAGE_MANIFEST_MEDIA_TYPES:
        raise InvalidManifestError(f"{what}: unsupported manifest media type {manifest.media_type}")
    doc = parse_json_object(manifest.data, what)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidManifestError(f"{what}: manifest without a layers list")
    return ImageManifest(
        config=Descriptor.from_json(doc.get("config"), what),
        layers=tuple(Descriptor.from_json(layer, what) for layer in layers),
    )
