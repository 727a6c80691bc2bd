"""Rendering plans for people (a table) and for programs (JSON), on stdout.

One row per entry and arch: ENTRY, ARCH, UPSTREAM (checksum), PUBLISHED (checksum), ACTION.
Checksums are abbreviated to 12 hex digits in the table; JSON carries them in full, with the
reason of every action and the tags the entry carries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from containerdisks.engine.plan import ArchPlan, EntryPlan

__all__ = ["plan_json", "render_plans"]

_HEADER = ("ENTRY", "ARCH", "UPSTREAM", "PUBLISHED", "ACTION")


def _short(checksum: str | None) -> str:
    return checksum[:12] if checksum else "-"


def _action(row: ArchPlan) -> str:
    if row.action == "failed":
        return f"failed: {row.reason}"
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


def render_plans(plans: Sequence[EntryPlan], out: TextIO, fmt: str = "table") -> None:
    if fmt == "json":
        json.dump(plan_json(plans), out, indent=2)
        out.write("\n")
        return
    rows = [_HEADER] + [
        (p.key, r.arch, _short(r.upstream), _short(r.published), _action(r))
        for p in plans
        for r in p.arches
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
