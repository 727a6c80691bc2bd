"""Reading what a registry has published, for the planner (its `PublishedReader`).

`<name>:<version>` is read once per entry: the top manifest, then (through the index walker,
`walk.children`) only the platform manifests and configs of the arches the entry publishes.
"Repository unknown" and "tag unknown" (Quay's deleted-tag answer included) are answers, not
errors; everything else is a `ReadError` naming the reference, so that the entry fails and the
others go on. What was read is a `PublishedImage`, the value the planner compares with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from containerdisks import oci
from containerdisks.oci.media import parse_index, parse_json_object
from containerdisks.pipeline.image import MediaFamily, family_of
from containerdisks.registry.stores import Place
from containerdisks.registry.walk import children

__all__ = ["PublishedArch", "PublishedImage", "ReadError", "RegistryReader"]

_MAX_CONFIG = 1 << 20


class ReadError(Exception):
    """Reading the published state failed for a reason other than "not there yet"."""


@dataclass(frozen=True)
class PublishedArch:
    digest: str
    family: MediaFamily | None
    config: Mapping[str, Any]
    size: int = 0
    media_type: str = ""
    layer: oci.Descriptor | None = None  # the single layer, when the manifest has exactly one

    @property
    def shasum(self) -> str | None:
        labels = (self.config.get("config") or {}).get("Labels") or {}
        value = labels.get("shasum")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class PublishedImage:
    """What `<name>:<version>` holds: its digest, shape and the arches that were asked for."""

    digest: str
    family: MediaFamily | None
    is_index: bool
    platforms: tuple[str, ...]  # goarch of every entry of the index, in order
    arches: Mapping[str, PublishedArch]  # by goarch; absent = arch missing from the index


class RegistryReader:
    """A `PublishedReader` over a `Place` (a registry namespace or a layout directory)."""

    def __init__(self, place: Place) -> None:
        self._place = place
        self._client = place.store

    def _repo(self, name: str) -> str:
        return self._place.repo(name)

    def _where(self, name: str, tag: str) -> str:
        return self._place.where(name, tag)

    async def read(self, name: str, tag: str, goarches: tuple[str, ...]) -> PublishedImage | str:
        repo = self._repo(name)
        try:
            top = await self._client.get_manifest(repo, tag)
            where = self._where(name, tag)
            _parse(top.data, where)  # a top that is no JSON object says so in its own words
            if top.is_index:
                platforms = tuple(
                    e.platform.architecture if e.platform else "" for e in parse_index(top, where)
                )
                arches: dict[str, PublishedArch] = {}
                async for entry, manifest in children(
                    self._client, repo, top, where, architectures=goarches
                ):
                    assert entry.platform is not None  # children() chose it by its platform
                    arches[entry.platform.architecture] = await self._config_of(
                        repo, name, tag, manifest
                    )
                family = family_of(top.media_type)
                return PublishedImage(top.digest, family, True, platforms, arches)
            single = await self._config_of(repo, name, tag, top)
            arch = str(single.config.get("architecture", ""))
            return PublishedImage(
                top.digest,
                single.family,
                False,
                (arch,),
                {arch: single} if arch in goarches else {},
            )
        except oci.RepositoryUnknownError:
            return "repository unknown"
        except oci.ManifestUnknownError:
            return "tag unknown"
        except (oci.OCIError, KeyError, TypeError) as e:
            raise ReadError(f"cannot read published {self._where(name, tag)}: {e}") from None

    async def _config_of(
        self, repo: str, name: str, tag: str, manifest: oci.Manifest
    ) -> PublishedArch:
        doc = _parse(manifest.data, self._where(name, tag))
        config_digest = doc["config"]["digest"]
        blob = await self._client.get_blob(repo, config_digest, max_size=_MAX_CONFIG)
        config = _parse(blob, f"config {config_digest} of {self._where(name, tag)}")
        layers = doc.get("layers") or []
        layer = (
            oci.Descriptor.from_json(layers[0], self._where(name, tag))
            if len(layers) == 1
            else None
        )
        return PublishedArch(
            manifest.digest,
            family_of(manifest.media_type),
            config,
            size=manifest.size,
            media_type=manifest.media_type,
            layer=layer,
        )

    async def tag_digest(self, name: str, tag: str) -> str | None:
        try:
            desc = await self._client.head_manifest(self._repo(name), tag)
        except oci.RepositoryUnknownError:
            return None
        except oci.OCIError as e:
            raise ReadError(f"cannot read published {self._where(name, tag)}: {e}") from None
        return desc.digest if desc is not None else None


def _parse(data: bytes, what: str) -> dict[str, Any]:
    try:
        return parse_json_object(data, what)
    except oci.InvalidManifestError as e:
        raise ReadError(str(e)) from None
