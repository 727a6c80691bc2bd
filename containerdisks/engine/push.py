"""`images push`: discover, plan, and (later) publish every focused entry; the exit status.

One pass: every focused catalog item is discovered once (the Upstream shares each metadata URL
between items and arches), each resulting entry is planned against the source registry with at
most `workers` entries in flight, and the plan goes to stdout. A failure in one entry never stops
the others; it is logged as one event, shown in its rows, and turns the exit status to 1
(0 with `--no-fail`). A dry run downloads no image and writes nothing.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

import structlog

from containerdisks.catalog import Entry, Focus, ItemFailure, load_catalog
from containerdisks.engine.plan import ArchPlan, EntryPlan, plan_entry
from containerdisks.engine.published import RegistryReader
from containerdisks.engine.report import render_plans
from containerdisks.engine.stores import open_places
from containerdisks.settings import ConfigError, Settings
from containerdisks.upstream import HttpUpstream, Mirrors, RetryPolicy

__all__ = ["images_push", "plan_pass"]

log = structlog.get_logger(__name__)


async def plan_pass(
    settings: Settings, config: dict[str, Any], config_name: str
) -> list[EntryPlan]:
    """Discover and plan every focused entry: the shared first half of push, serve and once."""
    focus = Focus(settings.focus)
    catalog = load_catalog(config, config_name=config_name)
    items = catalog.select(focus)
    upstream = HttpUpstream(
        Mirrors(settings.upstream_mirrors),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retry=RetryPolicy(attempts=settings.retries),
    )
    async with upstream, open_places(settings) as (source, _target):
        reader = RegistryReader(source)
        found = await asyncio.gather(*(catalog.discover(b, upstream, focus) for b in items))
        entries: list[Entry] = []
        plans: list[EntryPlan] = []
        for bound, result in zip(items, found, strict=True):
            if isinstance(result, ItemFailure):
                log.error("discovery_failed", entry=result.key, error=result.message)
                rows = [
                    ArchPlan(a, None, None, "failed", result.message) for a in bound.item.arches
                ]
                plans.append(EntryPlan(result.key, rows, error=result.message))
            else:
                entries.extend(result)
        if focus.version is not None and not entries and not plans:
            raise ConfigError(f"focus {focus.spec!r} matches no catalog entry")

        gate = asyncio.Semaphore(settings.workers)

        async def one(entry: Entry) -> EntryPlan:
            async with gate:
                plan = await plan_entry(
                    entry,
                    reader,
                    family=settings.media_types,
                    compression=settings.layer_compression,
                    force=settings.force,
                )
            if plan.error:
                log.error("plan_failed", entry=plan.key, error=plan.error)
            else:
                log.info("planned", entry=plan.key, actions={r.arch: r.action for r in plan.arches})
            return plan

        plans.extend(await asyncio.gather(*(one(e) for e in entries)))
    return plans


async def images_push(
    settings: Settings, config: dict[str, Any], config_name: str, out: TextIO | None = None
) -> int:
    if not settings.dry_run:
        raise ConfigError(
            "publishing is not built yet: --dry-run=false is not supported in this version; "
            "run without it to see the plan"
        )
    plans = await plan_pass(settings, config, config_name)
    render_plans(plans, out or sys.stdout, settings.output)
    failed = [p.key for p in plans if p.failed]
    if failed:
        log.warning("entries_failed", count=len(failed), entries=failed)
        return 0 if settings.no_fail else 1
    return 0
