"""The medius-compatible results file: what each entry published, or why it failed.

`{"name:version": {"Tags": [...], "Stage": "push", "Digest": "sha256:...", "Err": "..."}}` with
`Tags`, `Digest` and `Err` left out when empty, no key at all for an entry that was up to date,
2-space indent, mode 0600 (medius's `json.MarshalIndent` and `os.WriteFile(..., 0600)`). Written
atomically so a reader never sees half a file: into a `mkstemp` file beside it (a new name,
opened `O_EXCL|O_NOFOLLOW`, so no planted file or link is written through), fsynced, renamed over
the old one, and the directory fsynced. A file that cannot be written is a `ResultsError` naming
it, and the temporary file is removed.
Every string written passes through `containerdisks.oci.redact.redact_data`: an `Err` that
quotes a registry's error body never carries a secret we hold.

`Digest` is ours (medius's readers ignore unknown keys): the digest the tags pointed to when push
wrote them. verify pulls and boots exactly that digest, and promote copies exactly the digest
verify passed, so a staging tag that moved in between cannot slip unverified bytes through.
A record without one (medius's) is about what its `Tags[0]` names when a later stage first reads
it (`recorded_digest`, the one fallback verify and promote share); each stage then writes the
digest it worked on (`Result.after`).

The stages chain through this file (`push` -> `verify` -> `promote`); `read_results` is the
reading side, with one-line errors naming the file. Sharded pushes (`--shard I/N`) write one
file each; `merge_results` joins them for one verify and one promote, refusing an entry that two
files record.

The same pass is also told to the person or program that ran it (`arch_outcomes`,
`failure_causes`): per entry and arch what happened (`published`, `reused`, `up-to-date`,
`failed`; in a dry run the planned action), the tags that moved and the digest, and the failures
grouped by cause, so that one unreachable host or checksum file is said once, naming the entries
it failed. `commands/push.py` renders them; nothing here prints.

Decisions:
- A failure's cause is its reason, except a connection failure (`[<entry>: ]<url>: cannot
  connect to <host:port>: <why>`, upstream.py's wording), whose cause is the host and why:
  every URL on a host that cannot be reached fails for one reason. Through a mirror the
  reason ends `(mirror <url>)` (upstream.py); the host it names is then the mirror's, and the
  URL is left out of the cause, so one unreachable mirror is said once too.
- An arch that failed only because another arch of its entry did (`waiting for <arch>`) is told
  under the cause of that arch, not as a cause of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from containerdisks import oci
from containerdisks.engine.plan import EntryPlan
from containerdisks.oci.redact import redact, redact_data

__all__ = [
    "ArchOutcome",
    "Cause",
    "Result",
    "ResultsError",
    "arch_outcomes",
    "failed_earlier",
    "failure_causes",
    "merge_results",
    "read_results",
    "recorded_digest",
    "write_results",
]

STAGES = ("push", "verify", "promote")


class ResultsError(Exception):
    """The results file is missing, malformed or cannot be written; the message is one line
    naming it."""


@dataclass(frozen=True)
class Result:
    tags: list[str] = field(default_factory=list)
    error: str = ""
    stage: str = "push"
    digest: str = ""

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.tags:
            out["Tags"] = self.tags
        out["Stage"] = self.stage
        if self.digest:
            out["Digest"] = self.digest
        if self.error:
            out["Err"] = self.error
        return out

    def after(self, stage: str, error: str = "", digest: str = "") -> Result:
        """This record once `stage` ran on it: the same tags, the stage's error, and the digest
        it worked on (this record's when it names none)."""
        return Result(self.tags, error, stage, digest or self.digest)

    def bare_tags(self) -> list[str]:
        """The tags without their `name:` (medius writes `fedora:40-2406011530`); a tag read
        from an older file of ours, without a name, is taken as it is."""
        return [t.rpartition(":")[2] for t in self.tags]

    @classmethod
    def from_json(cls, key: str, data: object, where: str) -> Result:
        if not isinstance(data, dict):
            raise ResultsError(f"{where}: entry {key!r} is not an object")
        tags = data.get("Tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ResultsError(f"{where}: entry {key!r}: Tags must be a list of strings")
        values: dict[str, str] = {}
        for name in ("Stage", "Err", "Digest"):
            value = data.get(name, "")
            if not isinstance(value, str):
                raise ResultsError(f"{where}: entry {key!r}: {name} must be a string")
            values[name] = value
        if values["Stage"] not in STAGES:
            raise ResultsError(f"{where}: entry {key!r}: unknown Stage {values['Stage']!r}")
        return cls(tags=tags, error=values["Err"], stage=values["Stage"], digest=values["Digest"])


class _Heads(Protocol):
    async def head_manifest(self, repository: str, reference: str) -> oci.Descriptor | None: ...


async def recorded_digest(result: Result, store: _Heads, repository: str) -> str | None:
    """The digest a record is about: its `Digest`, else what its first tag names now in
    `repository` (a medius results file records no digest); None when that tag is gone or
    there is none. A registry error (`oci.OCIError`) is the caller's to word."""
    if result.digest:
        return result.digest
    tags = result.bare_tags()
    if not tags:
        return None
    head = await store.head_manifest(repository, tags[0])
    return head.digest if head is not None else None


def failed_earlier(results: Mapping[str, Result], keys: Iterable[str]) -> list[str]:
    """`name:version (stage)` of each entry of `keys` whose record holds an error: an earlier
    stage failed it, which fails verify and promote as in medius (unless `--no-fail`)."""
    return [f"{k} ({results[k].stage})" for k in dict.fromkeys(keys) if results[k].error]


def read_results(path: Path) -> dict[str, Result]:
    """Read a results file written by any stage (ours or medius's)."""
    where = f"results file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{where} does not exist (run `images push` first)") from None
    except OSError as e:
        raise ResultsError(f"{where}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ResultsError(f"{where}: not UTF-8 (byte 0x{e.object[e.start]:02x})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{where}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except RecursionError:
        raise ResultsError(f"{where}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: expected a JSON object")
    return {key: Result.from_json(key, value, where) for key, value in data.items()}


def merge_results(parts: Iterable[tuple[str, Mapping[str, Result]]]) -> dict[str, Result]:
    """The records of several results files as one, each file named by its `where`: sharded
    pushes record disjoint entries, so an entry recorded by two files is a `ResultsError` naming
    both (which record is right cannot be told)."""
    merged: dict[str, Result] = {}
    origin: dict[str, str] = {}
    for where, results in parts:
        for key, result in results.items():
            if key in origin:
                raise ResultsError(
                    f"{origin[key]} and {where} both record {key!r}; sharded results must not "
                    "overlap (were they made with the same --shard count and catalog?)"
                )
            merged[key] = result
            origin[key] = where
    return merged


def write_results(path: Path, results: Mapping[str, Result]) -> None:
    """Replace `path` with `results`, atomically and durably; `ResultsError` when it cannot."""
    doc = redact_data({k: r.as_json() for k, r in results.items()})
    data = (redact(json.dumps(doc, indent=2)) + "\n").encode()
    directory = path.parent
    where = f"results file {path}"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ResultsError(f"{where}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ResultsError(f"{where}: cannot write: {e.strerror or e}") from None
        raise
    _fsync_dir(directory, where)


def _fsync_dir(directory: Path, where: str) -> None:
    """Make the rename durable; a file system that cannot sync a directory is let be."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ResultsError(f"{where}: cannot sync its directory: {e.strerror or e}") from None
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise ResultsError(f"{where}: cannot sync its directory: {e.strerror or e}") from None
    finally:
        os.close(fd)


# -- what a pass did, told to whoever ran it -----------------------------------------------------


class _Done(Protocol):
    """What the engine reports of one entry after a pass (`engine.core.Outcome`)."""

    plan: EntryPlan
    tags: list[str]
    error: str | None
    digest: str


@dataclass(frozen=True)
class ArchOutcome:
    """One entry and arch after a pass: `published`, `reused`, `up-to-date` or `failed` (in a
    dry run the planned `build`, `reuse`, `retag`), why, the tags that moved and the digest
    `<name>:<version>` names (the one written, else the one found)."""

    entry: str
    arch: str
    outcome: str
    reason: str = ""
    tags: tuple[str, ...] = ()
    digest: str = ""
    upstream: str | None = None
    published: str | None = None


_DONE = {"build": "published", "reuse": "reused", "retag": "reused", "up-to-date": "up-to-date"}


def arch_outcomes(done: _Done, *, dry_run: bool) -> list[ArchOutcome]:
    """One row per arch of `done` (one `*` row for an entry that failed before it had arches)."""
    plan = done.plan
    digest = done.digest or plan.published_digest or ""
    if not plan.arches and done.error:
        return [ArchOutcome(plan.key, "*", "failed", done.error)]
    rows = []
    for row in plan.arches:
        if row.action == "failed" or (done.error and row.action != "up-to-date"):
            outcome, reason = "failed", (row.reason if row.action == "failed" else done.error)
        elif dry_run:
            outcome, reason = row.action, row.reason
        elif done.tags:
            outcome, reason = _DONE[row.action], row.reason
        else:
            outcome, reason = "up-to-date", row.reason
        rows.append(
            ArchOutcome(
                plan.key,
                row.arch,
                outcome,
                reason or "",
                tuple(done.tags) if outcome in ("published", "reused") else (),
                "" if outcome == "failed" else digest,
                row.upstream,
                row.published,
            )
        )
    return rows


@dataclass
class Cause:
    """One reason for failure and where it struck: entry -> its arches that failed of it."""

    reason: str
    where: dict[str, list[str]] = field(default_factory=dict)

    def entries(self) -> str:
        """`a:1, b:2 (x86_64)`: an entry all of whose arches failed of this is named alone."""
        return ", ".join(self._named(entry, arches) for entry, arches in self.where.items())

    def _named(self, entry: str, arches: list[str]) -> str:
        return entry if arches == ["*"] else f"{entry} ({', '.join(arches)})"


_UNREACHABLE = re.compile(r"\S+://\S+: (cannot connect to \S+: .*?)(?: \(mirror \S+\))?$")


def _cause(reason: str) -> str:
    unreachable = _UNREACHABLE.search(reason)
    return unreachable.group(1) if unreachable else reason


def failure_causes(rows: list[ArchOutcome]) -> list[Cause]:
    """The failed rows grouped by cause, in order of first appearance. An entry is named alone
    when every one of its arches failed of this cause (or waits for one that did), else with
    the arches that did."""
    arches: dict[str, list[str]] = {}
    for r in rows:
        arches.setdefault(r.entry, []).append(r.arch)
    failed = [r for r in rows if r.outcome == "failed"]
    own: dict[str, set[str]] = {}
    for r in failed:
        if not _waits(r):
            own.setdefault(r.entry, set()).add(_cause(r.reason))
    causes: dict[str, Cause] = {}
    for r in failed:
        if _waits(r) and len(own.get(r.entry, ())) > 1:
            continue  # waits for arches that failed of several causes: told under each of them
        key = next(iter(own[r.entry])) if _waits(r) and r.entry in own else _cause(r.reason)
        cause = causes.setdefault(key, Cause(key))
        cause.where.setdefault(r.entry, []).append(r.arch)
    for cause in causes.values():
        for entry, where in cause.where.items():
            if sorted(where) == sorted(arches[entry]):
                cause.where[entry] = ["*"]
    return list(causes.values())


def _waits(row: ArchOutcome) -> bool:
    return row.reason.startswith("waiting for ")
