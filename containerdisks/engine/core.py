"""The one sync core behind every command: discover the catalog, then sync entries one by one.

`images push` and the daemon (`serve`, `serve --once`) run the same two calls, as regsync's
`server`/`once`/`check` all run one `process(action)`:
- the items: the focused catalog, and with `--shard I/N` only shard I's part of it
  (engine/shards.py: the same part on every run and machine);
- `discover_each()`: every focused catalog item asked upstream once per pass, each on its own
  with its own deadline (`discovery_timeout`), its result handed on as soon as it is in, so a
  slow mirror holds up only its own item; a failed item (whatever its source raised) is an
  `Outcome` recorded under `name:version` or `name:*`. `discover()` waits for them all;
- `sync(entry)`: compute once what the entry should look like published (engine/spec.py),
  plan that against the source, then (unless a dry run) publish it, and with
  `keep_timestamp_tags` on, delete its older timestamp tags (engine/prune.py).
A replica sharing the catalog through Leases discovers only the items `holds` says it holds.
`planned` is called with each entry's plan as soon as it is made, before anything of the entry
is published (a one-shot run on a terminal prints it above the progress bars, commands/push.py).

An `Engine` lives as long as its process: the upstream answers' validators (conditional GETs),
registry connections and tokens carry over from pass to pass, and so does what the engine saw
published: when an entry's upstream is unchanged since the last pass and `<name>:<version>`
still has the digest the engine left or saw there, the entry is up to date for the cost of one
manifest HEAD.

The publisher (engine/publish.py, and with it the compressors isal and zstandard) is imported
only when an entry is published: a dry run, and a pass with nothing to do (`images push` of an
up-to-date entry, issue 21), plan and load nothing they would not use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
import structlog

from containerdisks import oci
from containerdisks.api import Artifact, SourceError
from containerdisks.catalog import BoundItem, Catalog, Entry, Focus, ItemFailure, focus_error
from containerdisks.engine.freshness import FreshnessError, SignatureTimes
from containerdisks.engine.plan import ArchPlan, EntryPlan, plan_entry
from containerdisks.engine.prune import Pruner
from containerdisks.engine.results import Result
from containerdisks.engine.shards import shard_keys
from containerdisks.engine.spec import EntrySpec
from containerdisks.openpgp import Keyrings, PinnedKey
from containerdisks.pipeline.image import MediaFamily
from containerdisks.registry.published import RegistryReader
from containerdisks.registry.stores import Connection, Place, open_places
from containerdisks.retry import RetryPolicy
from containerdisks.settings import ConfigError, Settings
from containerdisks.upstream import HttpUpstream, Mirrors
from containerdisks.workdir import own_work_dir

if TYPE_CHECKING:
    from containerdisks.engine.publish import Publisher
    from containerdisks.signing import Signer

__all__ = ["Engine", "Outcome"]

log = structlog.get_logger(__name__)


@dataclass
class Outcome:
    """What one pass did for one entry (or one item whose discovery failed)."""

    plan: EntryPlan
    tags: list[str]
    error: str | None
    digest: str = ""

    @property
    def key(self) -> str:
        return self.plan.key

    @property
    def result(self) -> Result | None:
        """The results-file record; None for an entry that was up to date."""
        if self.error:
            return Result(error=self.error)
        if self.tags:
            # medius's form, `name:tag`: its verify pulls `path.Join(registry, Tags[0])`.
            name = self.key.partition(":")[0]
            return Result(tags=[f"{name}:{t}" for t in self.tags], digest=self.digest)
        return None


def _fingerprint(spec: EntrySpec, family: str, compression: str) -> tuple[object, ...]:
    """Everything upstream or the catalog says about an entry that its image depends on."""
    return (
        spec.entry.artifacts,
        tuple(a.core for a in spec.arches),
        spec.tags,
        family,
        compression,
    )


def sign_identity(settings: Settings) -> str:
    """The repository prefix signatures name: `sign_identity`, else where users pull from (the
    promote registry; the push target when that is a layout directory)."""
    if settings.sign_identity:
        return settings.sign_identity.rstrip("/")
    if settings.promote_registry.startswith("oci:"):
        return settings.target
    return settings.promote_registry.rstrip("/")


class Engine:
    """Discovery and sync of entries, sharing upstream, registries and memory across passes."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        upstream_traces: Sequence[aiohttp.TraceConfig] = (),
        registry_traces: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """`upstream_traces` / `registry_traces`: aiohttp tracing attached to the upstream and
        the registry sessions (the daemon's metrics)."""
        self.settings = settings
        self._registry_traces = registry_traces
        self.focus = Focus(settings.focus)
        self.catalog = catalog
        self.items = self.catalog.select(self.focus)
        #: Which items a pass discovers, asked per pass by label (`serve --leader-elect` /
        #: `--shards`: the daemon's Leases); every one by default.
        self.holds: Callable[[str], bool] = lambda label: True
        #: Told each entry's plan (not a failed one) before the entry is published.
        self.planned: Callable[[EntryPlan], None] = lambda plan: None
        if settings.shard_part is not None:
            index, count = settings.shard_part
            mine = shard_keys((b.item for b in self.catalog.items), index, count)
            self.items = [b for b in self.items if b.item.label in mine]
            log.info("shard", shard=settings.shard, entries=[b.item.label for b in self.items])
        self.publish = not settings.dry_run
        self.backoff = RetryPolicy.for_registry(settings.retries)
        self.upstream = HttpUpstream(
            Mirrors(settings.upstream_mirrors),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retry=RetryPolicy(attempts=settings.retries),
            metadata_deadline=settings.metadata_deadline,
            min_transfer_rate=settings.min_transfer_rate,
            rate_window=settings.min_transfer_rate_window,
            download_deadline=settings.download_deadline,
            trace_configs=upstream_traces,
            keyrings=Keyrings.pinned(
                PinnedKey(name, k.fingerprint, k.file, expires=k.expires)
                for name, keys in settings.upstream_keys.items()
                for k in keys
            ),
        )
        self._signature_times = SignatureTimes(settings.work_dir)
        self._stack = AsyncExitStack()
        self._seen: dict[str, tuple[tuple[object, ...], str]] = {}
        self._passes = 0
        self.source: Place
        self.target: Place
        self.family: MediaFamily = settings.media_types
        self.signer: Signer | None = None
        if settings.sign_key is not None:
            # cryptography only with a key: a no-change pass without one spares ~50 ms
            from containerdisks.signing import Signer, SigningError  # noqa: PLC0415

            try:
                self.signer = Signer.load(settings.sign_key)
            except SigningError as e:
                raise ConfigError(str(e)) from None

    async def __aenter__(self) -> Engine:
        try:
            await self._stack.enter_async_context(self.upstream)
            places = open_places(
                self.settings.source_registry,
                self.settings.target,
                Connection.of(self.settings),
                self.backoff,
                trace_configs=self._registry_traces,
            )
            self.source, self.target = await self._stack.enter_async_context(places)
        except BaseException:
            await self._stack.aclose()
            raise
        # The oci: target always writes OCI media types (docs/architecture.md "The image contract").
        self.family = "oci" if self.target.is_layout else self.settings.media_types
        self._reader = RegistryReader(self.source)
        self._pruner = Pruner(self.target)
        self._publisher: Publisher | None = None
        return self

    def _publisher_now(self) -> Publisher:
        """The publisher, made when the first entry is published (see the docstring)."""
        if self._publisher is None:
            from containerdisks.engine.publish import Publisher  # noqa: PLC0415

            self._publisher = Publisher(
                upstream=self.upstream,
                source=self.source,
                target=self.target,
                family=self.family,
                compression=self.settings.layer_compression,
                work_dir=self.settings.work_dir,
                max_spool_bytes=self.settings.max_spool_bytes,
                max_virtual_size=self.settings.max_virtual_size,
                max_image_bytes=self.settings.max_image_bytes,
                backoff=self.backoff,
                signer=self.signer,
                identity=sign_identity(self.settings),
            )
        return self._publisher

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def discover(self) -> tuple[list[Entry], list[Outcome]]:
        """One pass's discovery, all of it: the entries to sync, and the items that failed."""
        entries: list[Entry] = []
        failures: list[Outcome] = []
        async for _, found, failed in self.discover_each():
            entries += found
            failures += failed
        return entries, failures

    async def discover_each(self) -> AsyncGenerator[tuple[int, list[Entry], list[Outcome]]]:
        """One pass's discovery, one item at a time as each finishes: its index in the catalog,
        and its entries to sync or its failure. Every item runs concurrently under its own
        `discovery_timeout`; closing the iterator early cancels the items still running.

        From the second pass on, registry credentials are read again first: a daemon follows a
        rotated Secret without a restart."""
        if self._passes:
            await self._reload_credentials()
        self._passes += 1
        self.upstream.new_pass()
        timeout = self.settings.discovery_timeout
        tasks = [
            asyncio.create_task(self._discover_one(i, b, timeout))
            for i, b in enumerate(self.items)
            if self.holds(b.item.label)
        ]
        asked = {b.item.name for b in self.items if self.holds(b.item.label)}
        seen: set[tuple[str, str | None]] = set()  # (name, version); None: the item failed
        try:
            for next_done in asyncio.as_completed(tasks):
                index, bound, result = await next_done
                if isinstance(result, ItemFailure):
                    seen.add((bound.item.name, None))
                    yield index, [], [self._failed(bound, result)]
                else:
                    seen.update((e.item.name, e.version) for e in result)
                    yield index, result, []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        unmatched = [
            Focus.label((name, version))
            for name, version in self.focus.terms
            if version is not None and name in asked and not {(name, version), (name, None)} & seen
        ]
        if unmatched:
            raise ConfigError(focus_error(unmatched))

    async def _discover_one(
        self, index: int, bound: BoundItem, time_limit: float
    ) -> tuple[int, BoundItem, list[Entry] | ItemFailure]:
        found = await self.catalog.discover(bound, self.upstream, self.focus, time_limit=time_limit)
        return index, bound, found

    @staticmethod
    def _failed(bound: BoundItem, result: ItemFailure) -> Outcome:
        if result.crashed is not None:
            log.debug("source_crashed", entry=result.key, exception=result.crashed)
        log.error("discovery_failed", entry=result.key, error=result.message)
        rows = [ArchPlan(a, None, None, "failed", result.message) for a in bound.item.arches]
        return Outcome(EntryPlan(result.key, rows, error=result.message), [], result.message)

    async def sync(self, entry: Entry) -> Outcome:
        """Plan one entry and, unless this is a dry run, publish what the plan says; an entry
        whose signed checksum is older than the one accepted before fails (engine/freshness.py)
        unless `--force`."""
        try:
            rollback = (
                None
                if self.settings.force
                else self._signature_times.rollback(entry.key, entry.artifacts)
            )
        except FreshnessError as e:
            rollback = str(e)
        if rollback is not None:
            message = f"{entry.key}: {rollback}"
            log.error("signature_rollback", entry=entry.key, error=message)
            rows = [ArchPlan(a, None, None, "failed", message) for a in entry.arches]
            return Outcome(EntryPlan(entry.key, rows, error=message), [], message)
        outcome = await self._sync(entry)
        if self.publish and outcome.error is None:
            try:
                own_work_dir(self.settings.work_dir)
                self._signature_times.accept(entry.key, entry.artifacts)
            except (FreshnessError, ConfigError) as e:
                log.error("signature_times_not_saved", entry=entry.key, error=str(e))
        return outcome

    async def _sync(self, entry: Entry) -> Outcome:
        spec = EntrySpec.of(entry, keep_timestamp_tags=self.settings.keep_timestamp_tags)
        shortcut = await self._unchanged(spec)
        if shortcut is not None:
            return shortcut
        plan = await plan_entry(
            spec,
            self._reader,
            family=self.family,
            compression=self.settings.layer_compression,
            force=self.settings.force,
        )
        if plan.error:
            log.error("plan_failed", entry=plan.key, error=plan.error)
            return Outcome(plan, [], plan.error)
        log.info("planned", entry=plan.key, actions={r.arch: r.action for r in plan.arches})
        self.planned(plan)
        if not plan.needs_publish:
            if self.publish and self.signer is not None and plan.published_digest is not None:
                try:
                    await self._publisher_now().ensure_signed(spec, plan.published_digest)
                except oci.OCIError as e:
                    message = f"{entry.key}: signing {plan.published_digest}: {e}"
                    log.error("signing_failed", entry=plan.key, error=message)
                    return Outcome(plan, [], message)
            self._remember(spec, plan)
            return Outcome(plan, [], None)
        if not self.publish:
            return Outcome(plan, [], None)
        from containerdisks.engine.publish import PublishError  # noqa: PLC0415 - see the docstring

        log.info("publishing", entry=plan.key)
        try:
            tags, digest = await self._publisher_now().publish(spec, plan)
        except (PublishError, SourceError, oci.OCIError) as e:
            message = str(e) if str(e).startswith(entry.key) else f"{entry.key}: {e}"
            log.error("publish_failed", entry=plan.key, error=message)
            return Outcome(plan, [], message)
        log.info("published", entry=plan.key, tags=tags, digest=digest)
        self._seen.pop(entry.key, None)  # the next pass reads what was written
        await self._prune(spec)
        return Outcome(plan, tags, None, digest)

    async def _prune(self, spec: EntrySpec) -> None:
        """Retention after a publish, when `keep_timestamp_tags` is on for the entry. Its
        failure is logged (`retention_failed`) and does not undo or fail the publish; a
        registry refusing deletes is one warning (engine/prune.py)."""
        if not spec.keep:
            return
        plan = await self._pruner.plan(spec.name, spec.version, spec.keep)
        if plan.error:
            log.error("retention_failed", entry=spec.key, error=plan.error)
            return
        await self._pruner.apply(plan)

    async def _reload_credentials(self) -> None:
        reloads = {id(p.store): p.reload_credentials for p in (self.source, self.target)}
        for reload in reloads.values():
            if reload is not None:
                await reload()

    # -- memory across passes -------------------------------------------------------------------

    def _remember(self, spec: EntrySpec, plan: EntryPlan) -> None:
        if plan.published_digest is not None:
            fingerprint = _fingerprint(spec, self.family, self.settings.layer_compression)
            self._seen[spec.key] = (fingerprint, plan.published_digest)

    async def _unchanged(self, spec: EntrySpec) -> Outcome | None:
        """Up to date for one HEAD, when nothing changed since this engine last looked."""
        entry = spec.entry
        seen = self._seen.get(entry.key)
        if seen is None or self.settings.force:
            return None
        fingerprint, digest = seen
        if fingerprint != _fingerprint(spec, self.family, self.settings.layer_compression):
            return None
        try:
            head = await self.source.store.head_manifest(
                self.source.repo(entry.name), entry.version
            )
        except oci.OCIError:
            return None
        if head is None or head.digest != digest:
            return None
        rows = [
            ArchPlan(a.arch, a.checksum, a.checksum, "up-to-date", "unchanged since last pass")
            for a in entry.artifacts
            if isinstance(a, Artifact)
        ]
        log.info("unchanged", entry=entry.key, digest=digest)
        plan = EntryPlan(entry.key, rows)
        self.planned(plan)
        return Outcome(plan, [], None)
