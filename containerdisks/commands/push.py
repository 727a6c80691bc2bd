"""`images push`: one pass over the focused catalog, what it did on stdout, the exit status.

One job: the command around the pass `daemon.one_pass` runs (the same single pass as
`serve --once`, one code path, as regsync's `once`), and the rendering of what the pass did
(engine/results.py's `arch_outcomes` and `failure_causes`, through the one renderer):
- a dry run prints the plan: one row per entry and arch — ENTRY, ARCH, UPSTREAM (checksum),
  PUBLISHED (checksum), ACTION (`build`, `reuse`, `retag`, `up-to-date`);
- a publishing run prints the outcome: ENTRY, ARCH, OUTCOME (`published`, `reused`,
  `up-to-date`), DIGEST (what `<name>:<version>` names), TAGS (the tags that moved);
- then, in both, the failures: one line per cause — the entries it failed (with the arches
  when not all of them), `failed: <why>` — so one unreachable host or checksum file is said
  once. Checksums and digests are cut to 12 hex digits in the table; JSON (`--output json`)
  carries them in full, per entry and arch with the reason, plus the grouped `failures`.
On a terminal (stderr one, logs in the console format) a publishing run shows the plan first:
each entry's rows (the dry run's columns, under one header) are printed above the progress bars
as soon as the entry is planned, then its uploads draw their bars, and the outcome is printed on
stdout once the bars are gone. On a terminal the log does not repeat per entry what the plan
rows and the outcome say (`_SAID_ONCE`, logged at debug there: log.py's `fold`), so an offline
run of the default catalog prints its failures once per host and three lines of log.

Decisions:
- The work dir is checked (or created 0700) first when the run publishes: one owned by another
  user or writable by group/others ends the command (exit 2, workdir.py). `images push` may
  share it with other runs, so nothing in it is removed at start; `serve --once` owns it and
  removes what a killed predecessor left.
- The plan is streamed per entry, not held back as one table until every entry is planned: the
  engine discovers, plans and publishes each entry on its own (engine/core.py, scheduler.py),
  so a global barrier would keep every upload waiting for the slowest source (up to
  `discovery_timeout`, 300 s by default). The rows go to the terminal (stderr), never to
  stdout: a script reading stdout gets exactly one table (or one JSON document), the outcome.
  Off a terminal, the JSON logs carry each plan as the `planned` event.
- Exit 1 when an entry failed (0 with `--no-fail`), and 1 when the results file cannot be
  written (not an entry's failure: `--no-fail` does not cover it). A dry run with
  `--exit-code` exits 3 when something would be published and nothing failed (context.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

from containerdisks import daemon
from containerdisks import log as logging_setup
from containerdisks.catalog import Catalog
from containerdisks.commands.context import EXIT_OK, EXIT_PENDING, Context
from containerdisks.commands.render import table_lines, write_json
from containerdisks.engine.core import Outcome
from containerdisks.engine.plan import ADOPTED, EntryPlan
from containerdisks.engine.results import ArchOutcome, Cause, arch_outcomes, failure_causes
from containerdisks.workdir import own_work_dir

__all__ = ["focused_catalog", "once", "outcome_json", "run"]

log = structlog.get_logger(__name__)

_PLAN_HEADER = ("ENTRY", "ARCH", "UPSTREAM", "PUBLISHED", "ACTION")
_OUTCOME_HEADER = ("ENTRY", "ARCH", "OUTCOME", "DIGEST", "TAGS")
#: The engine's per-entry events the plan rows, the plan table or the outcome say once: on a
#: terminal a one-shot run logs them at debug (JSON logs and the daemon keep them).
_SAID_ONCE = (
    "planned",
    "discovery_failed",
    "plan_failed",
    "publish_failed",
    "signature_rollback",
    "signing_failed",
    "entries_failed",
)


async def run(ctx: Context) -> int:
    return await once(ctx, owns_work_dir=False)


async def once(ctx: Context, *, owns_work_dir: bool) -> int:
    """One pass, as `images push` (`owns_work_dir` False) or `serve --once` (True) runs it."""
    settings = ctx.settings
    if not settings.dry_run:
        own_work_dir(settings.work_dir)
        if owns_work_dir:
            daemon.remove_stale_files(settings.work_dir)
    console = logging_setup.console()
    planned: Callable[[EntryPlan], None] | None = None
    if console is not None:
        logging_setup.fold(_SAID_ONCE)
        if not settings.dry_run:
            catalog = focused_catalog(ctx)
            planned = _PlanRows(console, [b.item.label for b in catalog.select(ctx.focus)])
    outcomes, results_error = await daemon.one_pass(
        settings, lambda: focused_catalog(ctx), planned=planned
    )
    render_outcomes(outcomes, ctx)
    failed = [o.key for o in outcomes if o.error]
    if failed:
        log.warning("entries_failed", count=len(failed), entries=failed)
    status = ctx.exit_status(bool(failed), broken=results_error)
    if status == EXIT_OK and settings.dry_run and settings.exit_code:
        pending = any(o.plan.needs_publish for o in outcomes if not o.error)
        return EXIT_PENDING if pending else EXIT_OK
    return status


def focused_catalog(ctx: Context) -> Catalog:
    """The catalog, once `--focus` is known to be well formed (the engine's order of checks)."""
    _ = ctx.focus
    return ctx.catalog


def _short(value: str | None) -> str:
    return value.removeprefix("sha256:")[:12] if value else "-"


def outcome_json(outcomes: Sequence[Outcome], *, dry_run: bool) -> dict[str, Any]:
    entries = []
    rows: list[ArchOutcome] = []
    for o in outcomes:
        arches = arch_outcomes(o, dry_run=dry_run)
        rows += arches
        by_arch = {a.arch: a for a in arches}
        entries.append(
            {
                "entry": o.key,
                "tags": o.plan.tags,
                "error": o.error,
                "moved": o.tags,
                "digest": o.digest or o.plan.published_digest or "",
                "arches": [
                    {
                        "arch": r.arch,
                        "upstream": r.upstream,
                        "published": r.published,
                        "published_digest": r.published_digest,
                        "action": r.action,
                        "reason": r.reason,
                        "outcome": by_arch[r.arch].outcome,
                    }
                    for r in o.plan.arches
                ],
            }
        )
    failures = [{"reason": c.reason, "entries": c.where} for c in failure_causes(rows)]
    return {"entries": entries, "failures": failures}


def _failure_lines(causes: Sequence[Cause]) -> list[str]:
    """Not aligned: a long list of entries would push every reason off the screen."""
    return [f"{c.entries()}  failed: {c.reason}" for c in causes]


def _shown(row: ArchOutcome) -> str:
    """The outcome as the table shows it: an image adopted from medius says so."""
    return f"{row.outcome} (adopted from medius)" if row.reason == ADOPTED else row.outcome


def _plan_row(row: ArchOutcome) -> tuple[str, str, str, str, str]:
    return (row.entry, row.arch, _short(row.upstream), _short(row.published), _shown(row))


class _PlanRows:
    """A publishing run's plan on a terminal: each entry's rows above the progress bars as it
    is planned, the header with the first; the columns as wide as the catalog's labels need,
    so rows printed apart line up (an entry a wildcard discovered may be wider)."""

    def __init__(self, console: logging_setup.ProgressConsole, labels: Sequence[str]) -> None:
        self.console = console
        widest = max(labels, key=len, default="")
        self.template = (widest, "aarch64", "0" * 12, "0" * 12, "")
        self.headed = False

    def __call__(self, plan: EntryPlan) -> None:
        done = arch_outcomes(Outcome(plan, [], None), dry_run=True)
        rows = [_plan_row(r) for r in done if r.outcome != "failed"]
        if not rows:
            return
        lines = table_lines([_PLAN_HEADER, self.template, *rows])
        if not self.headed:
            self.headed = True
            self.console.line(lines[0])
        for line in lines[2:]:
            self.console.line(line)


def render_outcomes(outcomes: Sequence[Outcome], ctx: Context) -> None:
    dry_run = ctx.settings.dry_run
    if ctx.output == "json":
        write_json(outcome_json(outcomes, dry_run=dry_run), ctx.out)
        return
    rows = [r for o in outcomes for r in arch_outcomes(o, dry_run=dry_run)]
    done = [r for r in rows if r.outcome != "failed"]
    if dry_run:
        table = [_PLAN_HEADER] + [_plan_row(r) for r in done]
    else:
        table = [_OUTCOME_HEADER] + [
            (r.entry, r.arch, _shown(r), _short(r.digest), ", ".join(r.tags) or "-") for r in done
        ]
    failures = _failure_lines(failure_causes(rows))
    lines = table_lines(table) if done or not failures else []
    if lines and failures:
        lines.append("")
    for line in lines + failures:
        ctx.out.write(line + "\n")
