"""The medius-compatible results file: what each entry published, or why it failed.

`{"name:version": {"Tags": [...], "Stage": "push", "Err": "..."}}` with `Tags` and `Err` left
out when empty, no key at all for an entry that was up to date, 2-space indent, mode 0600
(medius's `json.MarshalIndent` and `os.WriteFile(..., 0600)`). Written atomically (temporary
file + rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Result", "write_results"]


@dataclass(frozen=True)
class Result:
    tags: list[str] = field(default_factory=list)
    error: str = ""
    stage: str = "push"

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.tags:
            out["Tags"] = self.tags
        out["Stage"] = self.stage
        if self.error:
            out["Err"] = self.error
        return out


def write_results(path: Path, results: Mapping[str, Result]) -> None:
    data = json.dumps({k: r.as_json() for k, r in results.items()}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)
