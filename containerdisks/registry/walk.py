"""Walking an image to its platforms: an index (or manifest list) to the manifests it lists.

The one walker of the project: the published reader (what plan compares against), the copy
(promote, and push reusing an arch) and verify's pull all go through it.

Decisions:
- The index is parsed defensively (`oci.media.parse_index`: a malformed entry is an
  `InvalidManifestError`, not a KeyError), and its entries are fetched one by one, in the index's
  order, only when the caller asks for the next: nothing is read that the caller does not use.
- With `architectures`, only entries whose platform is `os` and one of them are fetched, the
  first entry per architecture (a later duplicate is ignored, as a container runtime does).
- A single manifest stands for itself (`platform_manifest`); whether its config is for the
  platform wanted is the caller's business (the reader compares it, the pull does not read it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing

from containerdisks import oci
from containerdisks.oci.media import parse_index
from containerdisks.registry.stores import Store

__all__ = ["children", "platform_manifest"]


async def children(
    store: Store,
    repository: str,
    index: oci.Manifest,
    where: str,
    *,
    os: str = "linux",
    architectures: Collection[str] | None = None,
) -> AsyncGenerator[tuple[oci.Descriptor, oci.Manifest]]:
    """The entries of `index` with their manifests, fetched from `store`/`repository` in order;
    with `architectures`, only the first entry for `os` and each of them. `where` names the
    index in errors."""
    seen: set[str] = set()
    for entry in parse_index(index, where):
        if architectures is not None:
            platform = entry.platform
            if (
                platform is None
                or platform.os != os
                or platform.architecture not in architectures
                or platform.architecture in seen
            ):
                continue
            seen.add(platform.architecture)
        yield entry, await store.get_manifest(repository, entry.digest)


async def platform_manifest(
    store: Store,
    repository: str,
    top: oci.Manifest,
    architecture: str,
    where: str,
    *,
    os: str = "linux",
) -> oci.Manifest | None:
    """The manifest `top` holds for `os`/`architecture`: the index entry's (fetched), or `top`
    itself when it is no index; None when the index lists no such platform."""
    if not top.is_index:
        return top
    found = children(store, repository, top, where, os=os, architectures=(architecture,))
    async with aclosing(found):
        async for _, manifest in found:
            return manifest
    return None
