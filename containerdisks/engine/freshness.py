"""Rollback guard: a signed checksum older than the one already accepted for an entry is refused.

A signature proves origin, not freshness: a mirror can serve an older, validly signed checksum
file and with it an older image. So, per entry and arch, the newest accepted signature time
(`Evidence.signed_at`) is remembered in the work dir (`upstream-signatures.json`, mode 0600,
written through a new temporary file and a rename), and a discovery whose signature is older is
refused, in one line naming the signed file and both times, unless `--force`.

Decisions:
- Only `openpgp` evidence is compared; `tls-only` has no time to compare.
- The record moves forward only after a pass that was not a dry run accepted the entry (it
  published, or found it up to date): a dry run writes nothing.
- A file that is missing starts empty; one that is unreadable or malformed is an error naming it
  (refusing rollbacks silently forgotten would be worse than stopping).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from containerdisks.api import ArchError, Artifact

__all__ = ["FILE_NAME", "FreshnessError", "SignatureTimes"]

FILE_NAME = "upstream-signatures.json"
_MAX_BYTES = 4 << 20


class FreshnessError(Exception):
    """The remembered signature times cannot be read or written; one line naming the file."""


class SignatureTimes:
    """`entry -> arch -> signed_at` of the newest accepted upstream signatures."""

    def __init__(self, work_dir: Path) -> None:
        self.path = work_dir / FILE_NAME
        self._times: dict[str, dict[str, str]] | None = None

    def _load(self) -> dict[str, dict[str, str]]:
        if self._times is not None:
            return self._times
        try:
            with self.path.open("rb") as f:
                raw = f.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            self._times = {}
            return self._times
        except OSError as e:
            raise FreshnessError(f"{self.path}: {e.strerror or e}") from None
        try:
            if len(raw) > _MAX_BYTES:
                raise ValueError(f"larger than {_MAX_BYTES} bytes")
            data = json.loads(raw)
            if not isinstance(data, dict) or not all(
                isinstance(v, dict) and all(isinstance(t, str) for t in v.values())
                for v in data.values()
            ):
                raise ValueError("not {entry: {arch: time}}")
        except ValueError as e:
            raise FreshnessError(f"{self.path}: malformed: {e}") from None
        self._times = data
        return data

    def rollback(self, key: str, artifacts: Iterable[Artifact | ArchError]) -> str | None:
        """Why `artifacts` of entry `key` go back in time (one line), or None."""
        known = self._load().get(key, {})
        for a in artifacts:
            if not isinstance(a, Artifact) or a.evidence.signed_at is None:
                continue
            before = known.get(a.arch)
            if before is not None and a.evidence.signed_at < before:
                return (
                    f"{a.arch}: {a.evidence.signed_url} was signed {a.evidence.signed_at}, "
                    f"before the one accepted already ({before}): refusing a rollback "
                    "(--force accepts it)"
                )
        return None

    def accept(self, key: str, artifacts: Iterable[Artifact | ArchError]) -> None:
        """Remember the signature times of `artifacts` as the newest accepted for `key`."""
        times = self._load()
        entry = dict(times.get(key, {}))
        for a in artifacts:
            if isinstance(a, Artifact) and a.evidence.signed_at is not None:
                entry[a.arch] = a.evidence.signed_at
        if entry == times.get(key, {}):
            return
        times[key] = entry
        self._write(times)

    def _write(self, times: dict[str, dict[str, str]]) -> None:
        data = json.dumps(times, indent=2, sort_keys=True).encode()
        try:
            fd, tmp = tempfile.mkstemp(prefix=".signatures-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise FreshnessError(f"{self.path}: {e.strerror or e}") from None
