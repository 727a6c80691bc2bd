"""Image assembly: the containerdisk config, manifest and index, as canonical JSON.

These fields are frozen (DESIGN.md "The image contract"): every later change would change every
digest. JSON is serialised with sorted keys and no whitespace, so the same inputs give the same
bytes on every machine. The planner compares a published config with `config_core` (everything
but `rootfs`, which only a build can know) to decide whether an arch is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from containerdisks.api import GOARCH

__all__ = [
    "ENTRYPOINT",
    "MEDIA_TYPES",
    "SOURCE_LABEL",
    "MediaFamily",
    "canonical_json",
    "config_core",
    "family_of",
]

ENTRYPOINT = ("no-entrypoint",)
SOURCE_LABEL = "org.opencontainers.image.source"

MediaFamily = Literal["docker", "oci"]

MEDIA_TYPES: dict[MediaFamily, dict[str, str]] = {
    "docker": {
        "index": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifest": "application/vnd.docker.distribution.manifest.v2+json",
        "config": "application/vnd.docker.container.image.v1+json",
    },
    "oci": {
        "index": "application/vnd.oci.image.index.v1+json",
        "manifest": "application/vnd.oci.image.manifest.v1+json",
        "config": "application/vnd.oci.image.config.v1+json",
    },
}


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
