"""Reading what a registry has published, for the planner (a `PublishedReader`).

`<name>:<version>` is read once per entry: the top manifest, then only the platform manifests
and configs of the arches the entry publishes. "Repository unknown" and "tag unknown" (Quay's
deleted-tag answer included) are answers, not errors; everything else is a `ReadError` naming the
reference, so that the entry fails and the others go on.
"""

from __future__ import annotations

from typing import Any

from containerdisks import oci
from containerdisks.engine.plan import PublishedArch, PublishedImage, ReadError
from containerdisks.engine.stores import Place
from containerdisks.oci.media import parse_json_object
from containerdisks.pipeline.image import family_of

__all__ = ["RegistryReader"]

_MAX_CONFIG = 1 << 20


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
            doc = _parse(top.data, self._where(name, tag))
            if top.is_index:
                platforms: list[str] = []
                children: dict[str, str] = {}
                for m in doc.get("manifests") or []:
                    plat = m.get("platform") or {}
                    arch = plat.get("architecture", "")
                    platforms.append(arch)
                    if plat.get("os") == "linux" and arch in goarches and arch not in children:
                        children[arch] = m["digest"]
                arches = {
                    arch: await self._arch(repo, name, tag, digest)
                    for arch, digest in children.items()
                }
                return PublishedImage(
                    top.digest, family_of(top.media_type), True, tuple(platforms), arches
                )
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

    async def _arch(self, repo: str, name: str, tag: str, digest: str) -> PublishedArch:
        manifest = await self._client.get_manifest(repo, digest)
        return await self._config_of(repo, name, tag, manifest)

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
