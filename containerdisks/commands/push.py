"""`images push`: one pass over the focused catalog, the plan on stdout, the exit status.

One job: the command around the pass `daemon.one_pass` runs (the same single pass as
`serve --once`, one code path, as regsync's `once`), and the plan's rendering: one row per entry
and arch — ENTRY, ARCH, UPSTREAM (checksum), PUBLISHED (checksum), ACTION — with checksums cut to
12 hex digits in the table; JSON carries them in full, with the reason of every action and the
tags the entry carries.

Decisions:
- The work dir is checked (or created 0700) first when the run publishes: one owned by another
  user or writable by group/others ends the command (exit 2, workdir.py). `images push` may
  share it with other runs, so nothing in it is removed at start; `serve --once` owns it and
  removes what a killed predecessor left.
- Exit 1 when an entry failed (0 with `--no-fail`), and 1 when the results file cannot be
  written (not an entry's failure: `--no-fail` does not cover it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from containerdisks import daemon
from containerdisks.catalog import Catalog
from containerdisks.commands.context import Context
from containerdisks.commands.render import write_json, write_table
from containerdisks.engine.plan import ADOPTED, ArchPlan, EntryPlan
from containerdisks.workdir import own_work_dir

__all__ = ["focused_catalog", "once", "plan_json", "run"]

log = structlog.get_logger(__name__)

_HEADER = ("ENTRY", "ARCH", "UPSTREAM", "PUBLISHED", "ACTION")


async def run(ctx: Context) -> int:
    return await once(ctx, owns_work_dir=False)


async def once(ctx: Context, *, owns_work_dir: bool) -> int:
    """One pass, as `images push` (`owns_work_dir` False) or `serve --once` (True) runs it."""
    settings = ctx.settings
    if not settings.dry_run:
        own_work_dir(settings.work_dir)
        if owns_work_dir:
            daemon.remove_stale_files(settings.work_dir)
    outcomes, results_error = await daemon.one_pass(settings, lambda: focused_catalog(ctx))
    render_plans([o.plan for o in outcomes], ctx)
    failed = [o.key for o in outcomes if o.error]
    if failed:
        log.warning("entries_failed", count=len(failed), entries=failed)
    return ctx.exit_status(bool(failed), broken=results_error)


def focused_catalog(ctx: Context) -> Catalog:
    """The catalog, once `--focus` is known to be well formed (the engine's order of checks)."""
    _ = ctx.focus
    return ctx.catalog


def _short(checksum: str | None) -> str:
    return checksum[:12] if checksum else "-"


def _action(row: ArchPlan) -> str:
    if row.action == "failed":
        return f"failed: {row.reason}"
    if row.reason == ADOPTED:
        return f"{row.action} (adopted from medius)"
    return row.action


def plan_json(plans: Sequence[EntryPlan]) -> dict[str, Any]:
    return {
        "entries": [
            {
                "entry": p.key,
                "tags": p.tags,
                "error": p.error,
                "arches": [
                    {
                        "arch": r.arch,
                        "upstream": r.upstream,
                        "published": r.published,
                        "published_digest": r.published_digest,
                        "action": r.action,
                        "reason": r.reason,
                    }
                    for r in p.arches
                ],
            }
            for p in plans
        ]
    }


def render_plans(plans: Sequence[EntryPlan], ctx: Context) -> None:
    if ctx.output == "json":
        write_json(plan_json(plans), ctx.out)
        return
    rows = [_HEADER] + [
        (p.key, r.arch, _short(r.upstream), _short(r.published), _action(r))
        for p in plans
        for r in p.arches
    ]
    write_table(rows, ctx.out)
