"""`images prune`: tag retention on its own, for the focused catalog entries.

One job: for each focused entry, say which `<version>-<YYMMDDhhmm>` tags retention keeps and
which it deletes from the target registry (engine/prune.py decides), and, with
`--dry-run=false`, delete them. Dry run (the default) reads only.

Decisions:
- No upstream is asked: an entry with a fixed version is pruned at that version; for a source
  that discovers its versions (Fedora), the versions are those the target repository holds a
  `<version>` tag and timestamp tags of, so an end-of-life version is pruned too.
- An entry whose retention is off (`keep_timestamp_tags` 0 in the settings and not set in the
  catalog) is listed as `retention off`; nothing is read for it.
- Exit status: 0 when every entry was planned (and pruned); a registry that refuses deletes is
  one warning, still 0; 1 when reading or deleting failed for an entry (0 with `--no-fail`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from containerdisks import oci
from containerdisks.commands.context import Context
from containerdisks.commands.render import write_json, write_table
from containerdisks.engine.prune import PrunePlan, Pruner
from containerdisks.registry.stores import Connection, open_places
from containerdisks.retry import RetryPolicy
from containerdisks.tags import published_versions

__all__ = ["prune_json", "render_prune", "run"]

log = structlog.get_logger(__name__)

_HEADER = ("ENTRY", "TAG", "DIGEST", "ACTION")


async def run(ctx: Context) -> int:
    settings = ctx.settings
    catalog = ctx.catalog
    focus = ctx.focus
    items = catalog.select(focus)
    plans: list[PrunePlan] = []
    backoff = RetryPolicy.for_registry(settings.retries)
    connection = Connection.of(settings)
    places = open_places(settings.source_registry, settings.target, connection, backoff)
    async with places as (_, target):
        pruner = Pruner(target)
        for bound in items:
            item = bound.item
            keep = item.keep_for(settings.keep_timestamp_tags)
            repo = target.repo(item.name)
            if item.version is not None:
                versions = [item.version]
            elif not keep:
                versions = ["*"]
            else:
                try:
                    versions = published_versions(await target.store.list_tags(repo))
                except oci.NotFoundError:
                    versions = []
                except oci.OCIError as e:
                    error = f"{item.label}: retention: {e}"
                    plans.append(
                        PrunePlan(item.label, target.where(item.name), repo, keep, error=error)
                    )
                    continue
            for version in versions:
                if version != "*" and not focus.selects_key(item.name, version):
                    continue
                if not keep:
                    plans.append(
                        PrunePlan(f"{item.name}:{version}", target.where(item.name), repo, 0)
                    )
                    continue
                plan = await pruner.plan(item.name, version, keep)
                if not settings.dry_run and plan.error is None:
                    plan = await pruner.apply(plan)
                plans.append(plan)
    render_prune(plans, ctx.out, ctx.output, dry_run=settings.dry_run)
    for p in plans:
        if p.error:
            log.error("retention_failed", entry=p.key, error=p.error)
    return ctx.exit_status(any(p.error for p in plans))


def _action(plan: PrunePlan, action: str, reason: str, digest: str | None, dry_run: bool) -> str:
    if action == "keep":
        return f"keep: {reason}" if reason else "keep"
    if dry_run:
        return "delete"
    if digest in plan.deleted:
        return "deleted"
    if plan.refused:
        return "kept: the registry refuses deletes"
    return "not deleted"


def prune_json(plans: Sequence[PrunePlan], *, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "entries": [
            {
                "entry": p.key,
                "repository": p.where,
                "keep": p.keep,
                "error": p.error,
                "refused": p.refused,
                "tags": [
                    {"tag": r.tag, "digest": r.digest, "action": r.action, "reason": r.reason}
                    for r in p.rows
                ],
                "delete": p.deletes,
                "deleted": p.deleted,
            }
            for p in plans
        ],
    }


def render_prune(
    plans: Sequence[PrunePlan], out: TextIO, fmt: str = "table", *, dry_run: bool = True
) -> None:
    """The retention plan: one row per timestamp tag (newest first) of each entry."""
    if fmt == "json":
        write_json(prune_json(plans, dry_run=dry_run), out)
        return
    rows: list[tuple[str, str, str, str]] = [_HEADER]
    for p in plans:
        if p.error:
            rows.append((p.key, "-", "-", f"failed: {p.error}"))
        elif not p.keep:
            rows.append((p.key, "-", "-", "retention off (keep_timestamp_tags 0)"))
        elif p.refused and not p.rows:
            rows.append((p.key, "-", "-", "skipped: the registry refuses deletes"))
        elif not p.rows:
            rows.append((p.key, "-", "-", "no timestamp tags"))
        for r in p.rows:
            short = r.digest[:19] if r.digest else "-"
            rows.append((p.key, r.tag, short, _action(p, r.action, r.reason, r.digest, dry_run)))
    write_table(rows, out)
