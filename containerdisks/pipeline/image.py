"""Image assembly: the containerdisk config, manifest and index, as canonical JSON.

These fields are frozen (docs/architecture.md "The image contract"): every later change would change
every digest. JSON is serialised with sorted keys and no whitespace, so the same inputs give the
same bytes on every machine. The planner compares a published config with `config_core` (everything
but `rootfs`, which only a build can know) to decide whether an arch is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from containerdisks import oci
from containerdisks.api import GOARCH

__all__ = [
    "ENTRYPOINT",
    "MEDIA_TYPES",
    "SOURCE_LABEL",
    "LayerCompression",
    "MediaFamily",
    "canonical_json",
    "compression_of",
    "config_bytes",
    "config_core",
    "family_of",
    "index_bytes",
    "layer_media_type",
    "manifest_bytes",
]

ENTRYPOINT = ("no-entrypoint",)
SOURCE_LABEL = "org.opencontainers.image.source"

MediaFamily = Literal["docker", "oci"]
LayerCompression = Literal["gzip", "zstd", "none"]

MEDIA_TYPES: dict[MediaFamily, dict[str, str]] = {
    "docker": {
        "index": oci.DOCKER_MANIFEST_LIST,
        "manifest": oci.DOCKER_MANIFEST,
        "config": oci.DOCKER_CONFIG,
    },
    "oci": {"index": oci.OCI_INDEX, "manifest": oci.OCI_MANIFEST, "config": oci.OCI_CONFIG},
}

_LAYERS: dict[tuple[MediaFamily, LayerCompression], str] = {
    ("docker", "gzip"): oci.DOCKER_LAYER_GZIP,
    ("oci", "gzip"): oci.OCI_LAYER_GZIP,
    ("oci", "zstd"): oci.OCI_LAYER_ZSTD,
    ("oci", "none"): oci.OCI_LAYER,
}


def layer_media_type(family: MediaFamily, compression: LayerCompression) -> str:
    try:
        return _LAYERS[(family, compression)]
    except KeyError:
        raise ValueError(
            f"{compression} layers need OCI media types (Docker schema 2 knows gzip only)"
        ) from None


def compression_of(media_type: str) -> LayerCompression | None:
    for (_, compression), value in _LAYERS.items():
        if value == media_type:
            return compression
    return None


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def family_of(media_type: str) -> MediaFamily | None:
    for family, types in MEDIA_TYPES.items():
        if media_type in (types["index"], types["manifest"]):
            return family
    return None


def config_core(*, arch: str, checksum: str, source_url: str, env: Sequence[str]) -> dict[str, Any]:
    """The config of a containerdisk without `rootfs` (which depends on the built layer)."""
    config: dict[str, Any] = {
        "Entrypoint": list(ENTRYPOINT),
        "Labels": {"shasum": checksum, SOURCE_LABEL: source_url},
    }
    if env:
        config["Env"] = sorted(env)
    return {"architecture": GOARCH[arch], "os": "linux", "config": config}


def config_bytes(core: Mapping[str, Any], diff_id: str) -> bytes:
    return canonical_json({**core, "rootfs": {"type": "layers", "diff_ids": [diff_id]}})


def _desc(d: oci.Descriptor) -> dict[str, Any]:
    return {"mediaType": d.media_type, "digest": d.digest, "size": d.size}


def manifest_bytes(family: MediaFamily, config: oci.Descriptor, layer: oci.Descriptor) -> bytes:
    types = MEDIA_TYPES[family]
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": types["manifest"],
            "config": {**_desc(config), "mediaType": types["config"]},
            "layers": [_desc(layer)],
        }
    )


def index_bytes(family: MediaFamily, manifests: Sequence[oci.Descriptor]) -> bytes:
    """An index of platform manifests, in the given (catalog) order."""
    entries = []
    for m in manifests:
        if m.platform is None:
            raise ValueError(f"index entry {m.digest} has no platform")
        entries.append(
            {**_desc(m), "platform": {"architecture": m.platform.architecture, "os": "linux"}}
        )
    return canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPES[family]["index"], "manifests": entries}
    )
