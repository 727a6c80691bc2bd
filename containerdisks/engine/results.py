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
reading side, with one-line errors naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from containerdisks import oci
from containerdisks.oci.redact import redact, redact_data

__all__ = [
    "Result",
    "ResultsError",
    "failed_earlier",
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
