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
from typing import Any, TextIO

import structlog

from containerdisks.catalog import Entry
from containerdisks.engine.core import Engine, Outcome
from containerdisks.engine.report import render_plans
from containerdisks.engine.results import write_results
from containerdisks.settings import Settings

__all__ = ["images_push", "run_pass"]

log = structlog.get_logger(__name__)


async def run_pass(settings: Settings, config: dict[str, Any], config_name: str) -> list[Outcome]:
    """Discover and sync every focused entry, at most `workers` at a time."""
    async with Engine(settings, config, config_name) as engine:
        entries, outcomes = await engine.discover()
        gate = asyncio.Semaphore(settings.workers)

        async def one(entry: Entry) -> Outcome:
            async with gate:
                return await engine.sync(entry)

        outcomes.extend(await asyncio.gather(*(one(e) for e in entries)))
    return outcomes


async def images_push(
    settings: Settings, config: dict[str, Any], config_name: str, out: TextIO | None = None
) -> int:
    outcomes = await run_pass(settings, config, config_name)
    render_plans([o.plan for o in outcomes], out or sys.stdout, settings.output)
    if not settings.dry_run:
        results = {o.plan.key: r for o in outcomes if (r := o.result) is not None}
        write_results(settings.results_file, results)
    failed = [o.plan.key for o in outcomes if o.error]
    if failed:
        log.warning("entries_failed", count=len(failed), entries=failed)
        return 0 if settings.no_fail else 1
    return 0
