"""Tag retention: keep the newest N `<version>-<YYMMDDhhmm>` tags of an entry, delete the rest.

Every publish adds a timestamp tag (engine/publish.py) and nothing else ever removed them: one
Quay repository grew to 187 GiB (kubevirt/containerdisks#101). `keep_timestamp_tags` (a
setting, overridable per catalog entry; 0 = off, keep everything) keeps the newest N.

Decisions:
- Only the entry's own timestamp tags are candidates, newest kept first; what one is, is the
  tag policy's (containerdisks/tags.py).
- Deletes are by digest (the distribution spec's delete; by tag is optional and distribution
  2.8 refuses it), and a delete by digest takes away *every* tag pointing at the manifest. So a
  digest is deleted only when no kept tag of the repository (any tag, timestamp or not, of any
  version) points at it or, through an index, reaches it. An old timestamp tag that shares its
  digest with a kept tag stays, and the plan says why.
- The platform manifests of a deleted index are deleted after it, those that no kept tag
  reaches (an unchanged arch reuses its manifest across publishes, so many are shared). A
  registry that answers 404 for one (Quay deletes tags, not untagged children) is fine: its own
  garbage collection takes them. Blobs are never deleted here: registries reclaim them
  (distribution's `garbage-collect`, Quay's GC); the `oci:` layout store drops the blobs only
  the deleted manifest used.
- A registry that refuses deletes (405 / `UNSUPPORTED`) gets one warning per repository per
  process, not a failure; the same `Pruner` then leaves that repository alone.
- `plan` reads only (tag list, one HEAD per tag, the manifests of kept and doomed indexes);
  `apply` deletes. A dry run plans and prints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from containerdisks import oci
from containerdisks.engine.stores import Place
from containerdisks.oci.media import parse_index
from containerdisks.tags import timestamp_tags

__all__ = ["PrunePlan", "Pruner", "TagRow"]

log = structlog.get_logger(__name__)

#: HEAD requests in flight at once while reading where a repository's tags point.
_HEAD_CONCURRENCY = 8


@dataclass(frozen=True)
class TagRow:
    """One timestamp tag of the entry and what retention does with it."""

    tag: str
    digest: str | None
    action: Literal["keep", "delete"]
    reason: str = ""


@dataclass
class PrunePlan:
    """What retention would do to one entry (`name:version`) in one repository."""

    key: str
    where: str  # host/repository, for messages
    repository: str
    keep: int
    rows: list[TagRow] = field(default_factory=list)
    #: Digests to delete, in order: tagged manifests first, then the children only they reach.
    deletes: list[str] = field(default_factory=list)
    error: str | None = None
    #: The registry refused deletes here (in `apply`, or earlier in this process, in which
    #: case nothing was planned).
    refused: bool = False
    #: After `apply`: the digests deleted.
    deleted: list[str] = field(default_factory=list)

    @property
    def doomed_tags(self) -> list[str]:
        return [r.tag for r in self.rows if r.action == "delete"]


class Pruner:
    """Retention for one target place; remembers the repositories that refuse deletes."""

    def __init__(self, place: Place) -> None:
        self.place = place
        self._refused: set[str] = set()

    async def plan(self, name: str, version: str, keep: int) -> PrunePlan:
        """Read the repository and decide; never raises for a registry error (it is the
        plan's `error`)."""
        repo = self.place.repo(name)
        plan = PrunePlan(f"{name}:{version}", self.place.where(name), repo, keep)
        if repo in self._refused:
            plan.refused = True
            return plan
        try:
            await self._fill(plan, version)
        except oci.NotFoundError:
            pass  # nothing published yet: nothing to prune
        except oci.OCIError as e:
            plan.error = f"{plan.key}: retention: {e}"
        return plan

    async def _fill(self, plan: PrunePlan, version: str) -> None:
        store, repo = self.place.store, plan.repository
        tags = await store.list_tags(repo)
        stamps = timestamp_tags(version, tags)
        if len(stamps) <= plan.keep:
            plan.rows = [TagRow(t, None, "keep", "newest") for t in stamps]
            return
        old = set(stamps[plan.keep :])
        digests = await self._digests(repo, tags)
        kept_tops: dict[str, str] = {}  # digest -> a kept tag pointing at it
        for tag in sorted(tags):
            d = digests.get(tag)
            if tag not in old and d is not None:
                kept_tops.setdefault(d, tag)
        doomed_tops = sorted({d for t in old if (d := digests.get(t)) and d not in kept_tops})
        reached = await self._reach(repo, [*kept_tops])
        for t in stamps:
            d = digests.get(t)
            if t not in old:
                plan.rows.append(TagRow(t, d, "keep", "newest"))
            elif d is None:
                plan.rows.append(TagRow(t, None, "keep", "gone while reading"))
            elif d in kept_tops:
                plan.rows.append(TagRow(t, d, "keep", f"same digest as {kept_tops[d]}"))
            elif d in reached:
                plan.rows.append(TagRow(t, d, "keep", "part of a kept index"))
            else:
                plan.rows.append(TagRow(t, d, "delete", "older"))
        tops = [d for d in doomed_tops if d not in reached]
        children = await self._reach(repo, tops)
        plan.deletes = tops + sorted(children - reached - set(tops) - set(kept_tops))

    async def _digests(self, repo: str, tags: list[str]) -> dict[str, str]:
        """Where each tag points (one HEAD each, a few at a time); a tag gone meanwhile is
        left out."""
        limit = asyncio.Semaphore(_HEAD_CONCURRENCY)

        async def head(tag: str) -> tuple[str, str | None]:
            async with limit:
                desc = await self.place.store.head_manifest(repo, tag)
            return tag, desc.digest if desc is not None else None

        pairs = await asyncio.gather(*(head(t) for t in tags))
        return {t: d for t, d in pairs if d is not None}

    async def _reach(self, repo: str, tops: Iterable[str]) -> set[str]:
        """The platform manifests the indexes among `tops` list (not `tops` themselves)."""
        out: set[str] = set()
        for digest in tops:
            try:
                manifest = await self.place.store.get_manifest(repo, digest)
            except oci.NotFoundError:
                continue
            if manifest.is_index:
                subject = f"{self.place.store.host}/{repo}@{digest}"
                out |= {e.digest for e in parse_index(manifest, subject)}
        return out

    async def apply(self, plan: PrunePlan) -> PrunePlan:
        """Delete what `plan` says. A registry refusing deletes is warned about once per
        repository and remembered; any other error becomes the plan's `error`."""
        for digest in plan.deletes:
            try:
                await self.place.store.delete_manifest(plan.repository, digest)
            except oci.UnsupportedError as e:
                plan.refused = True
                if plan.repository not in self._refused:
                    self._refused.add(plan.repository)
                    log.warning(
                        "retention_unsupported",
                        repository=plan.where,
                        error=str(e),
                        hint="this registry does not delete manifests; old timestamp tags stay",
                    )
                return plan
            except oci.ManifestUnknownError:
                # gone already (a retried DELETE whose first answer was lost), or an untagged
                # child a registry leaves to its own garbage collection (Quay)
                log.debug("already_gone", repository=plan.where, digest=digest)
                if any(r.digest == digest for r in plan.rows):
                    plan.deleted.append(digest)
            except oci.OCIError as e:
                plan.error = f"{plan.key}: retention: {e}"
                log.error("retention_failed", entry=plan.key, error=plan.error)
                return plan
            else:
                plan.deleted.append(digest)
        if plan.deletes:
            log.info(
                "pruned",
                entry=plan.key,
                repository=plan.where,
                tags=plan.doomed_tags,
                digests=plan.deleted,
            )
        return plan
