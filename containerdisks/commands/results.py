"""`results merge`: the results files of sharded pushes joined into one for verify and promote.

One job: read every file named on the command line (ours or medius's format), join their records
(engine/results.py's `merge_results`) and write them to `--results-file`, printing how many
records each file gave.

Decisions:
- A merge, not several `--results-file` flags on verify and promote: those commands rewrite the
  file they read (the stage moves on), and one file in, one file out keeps that simple; the
  merged file is what a CI pipeline keeps as its record of the pass.
- An entry recorded by two files is refused (exit 2, one line naming both files and the
  entry): shards are disjoint, so an overlap means files of different shard counts or catalogs,
  and no record may silently win over another.
- It writes even under the default `--dry-run`: it publishes nothing, only joins files on this
  machine. The output may be one of the inputs (written atomically after all are read).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from containerdisks.commands.context import Context
from containerdisks.commands.render import write_json, write_table
from containerdisks.engine.results import ResultsError, merge_results, read_results, write_results
from containerdisks.settings import ConfigError

__all__ = ["run"]

log = structlog.get_logger(__name__)


async def run(ctx: Context) -> int:
    parts = []
    for name in ctx.operands:
        path = Path(name)
        try:
            parts.append((f"results file {path}", read_results(path)))
        except ResultsError as e:
            raise ConfigError(str(e)) from None
    try:
        merged = merge_results(parts)
    except ResultsError as e:
        raise ConfigError(str(e)) from None
    out = Path(ctx.settings.results_file)
    try:
        write_results(out, merged)
    except ResultsError as e:
        log.error("results_not_written", error=str(e))
        return ctx.exit_status(False, broken=True)
    counts = [(name, len(results)) for name, (_, results) in zip(ctx.operands, parts, strict=True)]
    if ctx.output == "json":
        write_json(
            {"merged": str(out), "files": [{"file": n, "entries": c} for n, c in counts]}, ctx.out
        )
    else:
        rows = [
            ("FILE", "ENTRIES"),
            *((n, str(c)) for n, c in counts),
            (f"-> {out}", str(len(merged))),
        ]
        write_table(rows, ctx.out)
    return ctx.exit_status(False)
