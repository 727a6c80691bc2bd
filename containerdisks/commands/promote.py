"""`images promote`: copy every verified entry of the results file to the target.

One job: wiring. The per-entry work is engine/promote.py (check the staging tags, copy by the
verified digest, tags last); this reads the results file, picks the entries, prints one row per
entry and writes stage `promote` back. Decisions:
- Entries at stage `verify` without `Err` are promoted (as medius), and so are entries whose
  promote failed (stage `promote` with `Err`: a rerun completes them, still by the digest
  verify recorded); every other record is kept as it was. `--focus` selects by the results
  file's `name:version` key.
- `--source-registry` is required (medius); `--target-registry` (setting `promote_registry`)
  defaults to quay.io/containerdisks. It is deliberately not `target_registry`: that is where
  `images push` writes, i.e. staging, and a config file or variable setting it must not make
  promote copy staging into itself. A target that is the source is a usage error (exit 2).
  Either may be `oci:/dir`.
- Dry run (the default) resolves and checks the staging tags in the source, prints what would be
  copied, and copies, tags and writes nothing (no results file either).
- Exit 1 when an entry failed, 0 with `--no-fail` (as verify), and 1 when the results file
  cannot be written. Promote uses no work dir: it streams registry to registry.
- An entry an earlier stage failed (`Err` at stage `push` or `verify`) fails promote too, as in
  medius: a row `failed: failed in stage <stage>: ...`, one log line naming every such entry,
  its record kept as it was. When nothing is eligible, one line says why (entries still at
  stage `push` need `images verify` first; entries at `promote` are done).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from containerdisks.catalog import Focus
from containerdisks.commands.context import Context, load_public_key
from containerdisks.commands.render import write_table
from containerdisks.engine.promote import (
    Candidate,
    Promoter,
    Promotion,
    describe_error,
)
from containerdisks.engine.results import (
    Result,
    ResultsError,
    failed_earlier,
    read_results,
    write_results,
)
from containerdisks.registry.stores import Connection, Place, open_places, same_place
from containerdisks.retry import RetryPolicy
from containerdisks.settings import ConfigError

__all__ = ["run"]

log = structlog.get_logger(__name__)


def _eligible(result: Result) -> bool:
    verified = result.stage == "verify" and not result.error
    return verified or (result.stage == "promote" and bool(result.error))


async def _one(promoter: Promoter, c: Candidate, target: Place, *, dry_run: bool) -> Promotion:
    try:
        outcome = await promoter.resolve(c)
        if not dry_run:
            outcome = await promoter.promote(c, outcome)
    except Exception as e:  # one entry's failure never stops the others
        message = describe_error(c, target, e)
        log.error("promote_failed", entry=c.key, error=message)
        return Promotion(c.key, c.result.digest, c.result.bare_tags(), message)
    return outcome


async def run(ctx: Context) -> int:
    settings = ctx.settings
    target_spec = settings.promote_registry  # never push's target_registry (staging)
    if same_place(settings.source_registry, target_spec, target_setting="promote_registry"):
        raise ConfigError(
            f"images promote: the target registry {target_spec} is --source-registry "
            f"{settings.source_registry}; promote copies staging elsewhere, not into itself"
        )
    try:
        results = read_results(settings.results_file)
    except ResultsError as e:
        raise ConfigError(str(e)) from None
    focus = ctx.focus
    if focus.given:
        ctx.catalog.select(focus)  # names no entry: usage
    candidates, earlier = [], []
    for key, result in results.items():
        name, _, version = key.partition(":")
        if not focus.selects_key(name, version):
            continue
        if _eligible(result):
            candidates.append(Candidate(key, name, result))
        elif result.error:  # push or verify failed it: medius's promote fails on it
            earlier.append(
                Promotion(key, result.digest, result.bare_tags(), f"failed in stage "
                          f"{result.stage}: {result.error.removeprefix(f'{key}: ')}")
            )  # fmt: skip
    if not candidates:
        _say_why_nothing(results, focus)
    backoff = RetryPolicy.for_registry(settings.retries)
    places = open_places(settings.source_registry, target_spec, Connection.of(settings), backoff)
    async with places as (source, target):
        promoter = Promoter(source, target, backoff, load_public_key(settings.verify_key))

        async def one(c: Candidate) -> Promotion:
            return await _one(promoter, c, target, dry_run=settings.dry_run)

        outcomes = await ctx.each(candidates, one)
        where = {c.key: target.where(c.name) for c in candidates}
    render(outcomes + earlier, where, ctx, dry_run=settings.dry_run)
    if failed := failed_earlier(results, (o.key for o in earlier)):
        log.error(
            "failed_in_earlier_stage", entries=", ".join(failed), exit_status="1 unless --no-fail"
        )
    broken = False
    if not settings.dry_run:
        updated = dict(results)
        for o in outcomes:  # the earlier failures keep their record
            updated[o.key] = o.record(results[o.key])
        try:
            write_results(Path(settings.results_file), updated)
        except ResultsError as e:
            log.error("results_not_written", error=str(e))
            broken = True
    return ctx.exit_status(any(o.error for o in outcomes + earlier), broken=broken)


def _say_why_nothing(results: dict[str, Result], focus: Focus) -> None:
    """One line: why no entry of the (focused) results file is eligible."""
    by_stage: dict[str, list[str]] = {}
    for key, result in results.items():
        name, _, version = key.partition(":")
        if focus.selects_key(name, version) and not result.error:
            by_stage.setdefault(result.stage, []).append(key)
    why = {
        "push": "pushed, not verified: run images verify first",
        "promote": "already promoted",
    }
    parts = [
        f"{len(keys)} at stage {stage} ({why.get(stage, 'not eligible')}: {', '.join(keys)})"
        for stage, keys in by_stage.items()
    ]
    log.warning(
        "nothing_to_promote",
        why="; ".join(parts)
        or "no entry in the results file" + (" matches --focus" if focus.given else ""),
        eligible="entries at stage verify without Err",
    )


def render(
    outcomes: list[Promotion], where: dict[str, str], ctx: Context, *, dry_run: bool
) -> None:
    """ENTRY, DIGEST, TARGET, RESULT: `would copy (tags ...)`, `promoted (...)`, or
    `failed: <why>`."""
    rows = [("ENTRY", "DIGEST", "TARGET", "RESULT")]
    for o in outcomes:
        tags = ", ".join(o.tags)
        if o.error:
            text = f"failed: {o.error.removeprefix(f'{o.key}: ')}"
        elif dry_run:
            text = f"would copy, then tag {tags}"
        else:
            s = o.stats
            text = (
                f"promoted in {o.seconds:.1f} s ({len(s.mounted)} mounted, {len(s.copied)} "
                f"copied, {len(s.present)} present), tagged {tags}"
                + (f", {o.attachments} signatures and attestations" if o.attachments else "")
            )
        rows.append((o.key, o.digest or "-", where.get(o.key, "-"), text))
    write_table(rows, ctx.out)
