"""Planning one entry: compare what upstream offers with what the registry has published.

docs/architecture.md "How a push flows", step 4. For each arch the published `<name>:<version>` is
read (manifest list -> platform manifest -> config). An arch is *unchanged* when its published
config is the one we would build (the entry spec's config core, engine/spec.py: everything but
`rootfs`; the `shasum` label pins the upstream bytes and builds are reproducible) and its
manifest is of the configured media-type family. Unknown repository, tag or arch means
"build"; any other error fails this entry only.

Actions per arch: `up-to-date`, `build`, `reuse` (unchanged, but the entry is republished because
another arch changed or the index shape is not what we would publish), `retag` (content is
current, but a tag the entry should carry points elsewhere), `failed`.

The planner reads through a `PublishedReader`, so a registry and (later) an OCI layout are read
the same way, and the planner never imports a registry client itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from containerdisks.api import GOARCH, ArchError, Artifact
from containerdisks.engine.adopt import adoptable
from containerdisks.engine.spec import ArchSpec, EntrySpec
from containerdisks.oci import Descriptor
from containerdisks.pipeline.image import LayerCompression, MediaFamily, compression_of
from containerdisks.registry.published import PublishedArch, PublishedImage, ReadError

__all__ = [
    "ADOPTED",
    "Action",
    "ArchPlan",
    "EntryPlan",
    "PublishedReader",
    "plan_entry",
]

Action = Literal["up-to-date", "build", "reuse", "retag", "failed"]

#: The reason of an `up-to-date` arch whose config medius wrote (engine/adopt.py).
ADOPTED = "adopted: published by medius, same upstream checksum"


class PublishedReader(Protocol):
    async def read(self, name: str, tag: str, goarches: tuple[str, ...]) -> PublishedImage | str:
        """The published image, or a short reason why there is none (`repository unknown`,
        `tag unknown`). Raises `ReadError` for anything else."""
        ...

    async def tag_digest(self, name: str, tag: str) -> str | None:
        """The digest a tag points to, None when the tag does not exist."""
        ...


@dataclass
class ArchPlan:
    arch: str
    upstream: str | None
    published: str | None
    action: Action
    reason: str = ""
    published_digest: str | None = None
    #: For a `build` whose upstream bytes did not change: the published layer and its diff_id,
    #: which the build reuses instead of downloading again (only the config changes).
    layer: Descriptor | None = None
    diff_id: str | None = None


@dataclass
class EntryPlan:
    key: str
    arches: list[ArchPlan]
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    #: The digest `<name>:<version>` had when it was read (None: not published).
    published_digest: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def needs_publish(self) -> bool:
        return any(a.action in ("build", "reuse", "retag") for a in self.arches)


def _failed(spec: EntrySpec, message: str) -> EntryPlan:
    rows = [
        ArchPlan(a.arch, a.checksum if isinstance(a, Artifact) else None, None, "failed", message)
        for a in spec.entry.artifacts
    ]
    return EntryPlan(spec.key, rows, list(spec.tags), error=message)


def _compare(
    want: ArchSpec,
    have: PublishedArch,
    family: MediaFamily,
    compression: LayerCompression,
    *,
    force: bool,
) -> ArchPlan:
    """One published arch against what we would build now."""
    artifact = want.artifact
    row = ArchPlan(artifact.arch, artifact.checksum, have.shasum, "up-to-date", "", have.digest)
    if force:
        row.action, row.reason = "build", "forced"
        return row
    if have.shasum != artifact.checksum:
        row.action, row.reason = "build", "upstream changed"
        return row
    core = {k: v for k, v in have.config.items() if k != "rootfs"}
    layer_compression = compression_of(have.layer.media_type) if have.layer else None
    if core != want.core and not adoptable(have.config, want.core, one_layer=bool(have.layer)):
        row.action, row.reason = "build", "config changed"
    elif have.family != family:
        row.action, row.reason = "build", f"media types are not {family}"
    elif layer_compression != compression:
        row.action, row.reason = "build", f"layer is not {compression}"
    elif core != want.core:
        row.reason = ADOPTED  # medius's config, as ours would be (engine/adopt.py)
    diff_ids = (have.config.get("rootfs") or {}).get("diff_ids") or []
    if row.action == "build" and layer_compression == compression and len(diff_ids) == 1:
        # Same upstream bytes, same compression: the published layer is what we would build.
        row.layer, row.diff_id = have.layer, str(diff_ids[0])
    return row


async def plan_entry(
    spec: EntrySpec,
    reader: PublishedReader,
    *,
    family: MediaFamily,
    compression: LayerCompression = "gzip",
    force: bool = False,
) -> EntryPlan:
    entry = spec.entry
    errors = [a for a in entry.artifacts if isinstance(a, ArchError)]
    if not entry.artifacts:
        return _failed(spec, "upstream lists no arch for this entry")
    if errors:
        # The entry waits until every arch is verifiable: a published index never loses an arch.
        waiting = "waiting for " + ", ".join(e.arch for e in errors)
        failed_rows = [
            ArchPlan(a.arch, None, None, "failed", a.message)
            if isinstance(a, ArchError)
            else ArchPlan(a.arch, a.checksum, None, "failed", waiting)
            for a in entry.artifacts
        ]
        message = "; ".join(f"{e.arch}: {e.message}" for e in errors)
        return EntryPlan(entry.key, failed_rows, list(spec.tags), error=message)
    goarches = tuple(a.platform.architecture for a in spec.arches)
    try:
        published = await reader.read(entry.name, entry.version, goarches)
    except ReadError as e:
        return _failed(spec, str(e))

    rows: list[ArchPlan] = []
    for want in spec.arches:
        checksum = want.artifact.checksum
        if isinstance(published, str):
            rows.append(ArchPlan(want.arch, checksum, None, "build", published))
            continue
        have = published.arches.get(want.platform.architecture)
        if have is None:
            rows.append(ArchPlan(want.arch, checksum, None, "build", "arch missing"))
            continue
        rows.append(_compare(want, have, family, compression, force=force))

    plan = EntryPlan(entry.key, rows, list(spec.tags))
    if not isinstance(published, str):
        plan.published_digest = published.digest
        # A published index never loses an arch: if upstream stopped listing one the catalog
        # publishes, the entry waits (fails, naming it) instead of shrinking the index.
        catalog = {GOARCH[a] for a in entry.item.arches}
        lost = [p for p in published.platforms if p in catalog and p not in goarches]
        if lost:
            names = ", ".join(lost)
            return _failed(
                spec,
                f"upstream no longer lists {names}, which the published {entry.key} has; "
                "a published index never loses an arch",
            )
    if isinstance(published, str) or plan.needs_publish:
        for row in rows:
            if row.action == "up-to-date":
                row.action = "reuse"
        return plan
    shape_ok = (
        published.family == family
        and published.is_index == (len(spec.arches) > 1)
        and published.platforms == goarches
    )
    if not shape_ok:
        for row in rows:
            row.action, row.reason = "reuse", "index differs"
        return plan
    stale = [t for t in plan.tags if t != entry.version]
    try:
        moved = [t for t in stale if await reader.tag_digest(entry.name, t) != published.digest]
    except ReadError as e:
        return _failed(spec, str(e))
    if moved:
        for row in rows:
            row.action, row.reason = "retag", "tag " + ", ".join(moved) + " not current"
    return plan
