"""`images push`: one pass over the focused catalog — discover, plan, publish — and its status.

Every focused catalog item is discovered once (the Upstream shares each metadata URL between
items and arches); each resulting entry is planned against the source and, unless this is a dry
run, published to the target, with at most `workers` entries in flight. A failure in one entry
never stops the others: it is logged as one event, shown in the plan, recorded in the results
file, and turns the exit status to 1 (0 with `--no-fail`). A dry run downloads no image and
writes nothing; otherwise the results file is written at the end, failures included.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from containerdisks import oci
from containerdisks.api import SourceError
from containerdisks.catalog import Entry, Focus, ItemFailure, load_catalog
from containerdisks.engine.plan import ArchPlan, EntryPlan, plan_entry
from containerdisks.engine.published import RegistryReader
from containerdisks.engine.report import render_plans
from containerdisks.engine.results import Result, write_results
from containerdisks.engine.retry import Backoff
from containerdisks.engine.stores import open_places
from containerdisks.engine.sync import Publisher, PublishError
from containerdisks.pipeline.image import MediaFamily
from containerdisks.settings import ConfigError, Settings
from containerdisks.upstream import HttpUpstream, Mirrors, RetryPolicy

__all__ = ["Outcome", "images_push", "run_pass"]

log = structlog.get_logger(__name__)


@dataclass
class Outcome:
    """What one pass did for one entry (or one item whose discovery failed)."""

    plan: EntryPlan
    tags: list[str]
    error: str | None

    @property
    def result(self) -> Result | None:
        """The results-file record; None for an entry that was up to date."""
        if self.error:
            return Result(error=self.error)
        if self.tags:
            return Result(tags=self.tags)
        return None


async def run_pass(
    settings: Settings, config: dict[str, Any], config_name: str, *, publish: bool
) -> list[Outcome]:
    """Discover, plan and (if `publish`) publish every focused entry."""
    focus = Focus(settings.focus)
    catalog = load_catalog(config, config_name=config_name)
    items = catalog.select(focus)
    upstream = HttpUpstream(
        Mirrors(settings.upstream_mirrors),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retry=RetryPolicy(attempts=settings.retries),
    )
    backoff = Backoff(attempts=settings.retries)
    async with upstream, open_places(settings, backoff) as (source, target):
        reader = RegistryReader(source)
        # The oci: target always writes OCI media types (DESIGN.md "The image contract").
        family: MediaFamily = "oci" if target.is_layout else settings.media_types
        publisher = Publisher(
            upstream=upstream,
            source=source,
            target=target,
            family=family,
            compression=settings.layer_compression,
            work_dir=settings.work_dir,
            max_spool_bytes=settings.max_spool_bytes,
            backoff=backoff,
        )
        found = await asyncio.gather(*(catalog.discover(b, upstream, focus) for b in items))
        entries: list[Entry] = []
        outcomes: list[Outcome] = []
        for bound, result in zip(items, found, strict=True):
            if isinstance(result, ItemFailure):
                log.error("discovery_failed", entry=result.key, error=result.message)
                rows = [
                    ArchPlan(a, None, None, "failed", result.message) for a in bound.item.arches
                ]
                plan = EntryPlan(result.key, rows, error=result.message)
                outcomes.append(Outcome(plan, [], result.message))
            else:
                entries.extend(result)
        if focus.version is not None and not entries and not outcomes:
            raise ConfigError(f"focus {focus.spec!r} matches no catalog entry")

        gate = asyncio.Semaphore(settings.workers)

        async def one(entry: Entry) -> Outcome:
            async with gate:
                plan = await plan_entry(
                    entry,
                    reader,
                    family=family,
                    compression=settings.layer_compression,
                    force=settings.force,
                )
                if plan.error:
                    log.error("plan_failed", entry=plan.key, error=plan.error)
                    return Outcome(plan, [], plan.error)
                log.info("planned", entry=plan.key, actions={r.arch: r.action for r in plan.arches})
                if not publish or not plan.needs_publish:
                    return Outcome(plan, [], None)
                log.info("publishing", entry=plan.key)
                try:
                    tags = await publisher.publish(entry, plan)
                except (PublishError, SourceError, oci.OCIError) as e:
                    message = f"{entry.key}: {e}" if not str(e).startswith(entry.key) else str(e)
                    log.error("publish_failed", entry=plan.key, error=message)
                    return Outcome(plan, [], message)
                log.info("published", entry=plan.key, tags=tags)
                return Outcome(plan, tags, None)

        outcomes.extend(await asyncio.gather(*(one(e) for e in entries)))
    return outcomes


async def images_push(
    settings: Settings, config: dict[str, Any], config_name: str, out: TextIO | None = None
) -> int:
    outcomes = await run_pass(settings, config, config_name, publish=not settings.dry_run)
    render_plans([o.plan for o in outcomes], out or sys.stdout, settings.output)
    if not settings.dry_run:
        results = {o.plan.key: r for o in outcomes if (r := o.result) is not None}
        write_results(settings.results_file, results)
    failed = [o.plan.key for o in outcomes if o.error]
    if failed:
        log.warning("entries_failed", count=len(failed), entries=failed)
        return 0 if settings.no_fail else 1
    return 0
