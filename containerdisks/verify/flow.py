"""The one verify flow, whatever boots the guest: fresh key -> user data -> boot -> SSH check
-> the entry's result at stage `verify`.

`images verify --local` (qemu on this host) and `images verify` (KubeVirt) differ only in the
`Booter` they hand in; selection, credentials, the check, results and the table are here once.
Several targets run in parallel (`--workers`); a failure in one never stops the others, and a
cancellation (a signal) ends every boot through its own cleanup before it propagates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, TextIO

import structlog

from containerdisks.engine.results import Result
from containerdisks.oci.redact import redact
from containerdisks.verify.pull import PullError
from containerdisks.verify.seed import SeedError, make_credentials, user_data
from containerdisks.verify.ssh import CheckFailedError, Guest, SshCheck, check_login
from containerdisks.verify.target import Skipped, Target

__all__ = ["BootError", "Booter", "Verdict", "render", "verify_all"]

log = structlog.get_logger(__name__)

Status = Literal["verified", "failed", "skipped", "planned"]


class BootError(Exception):
    """A booter could not boot the guest or reach it (qemu here, a VM in KubeVirt); one line.

    Each booter raises its own subclass; the flow knows only this base.
    """


class Booter(Protocol):
    def describe(self, target: Target) -> str:
        """How `target` would be booted, for the dry run."""
        ...

    def cannot_boot(self, target: Target) -> str | None: ...

    def boot(self, target: Target, user_data: str) -> AbstractAsyncContextManager[Guest]:
        """The booted guest, for as long as the context lasts; `BootError` when it cannot be."""
        ...


@dataclass(frozen=True)
class Verdict:
    key: str
    arch: str
    status: Status
    detail: str
    seconds: float = 0.0
    result: Result | None = None  # the new results-file record; None leaves the entry as it was


async def _verify(target: Target, booter: Booter, check: SshCheck) -> Verdict:
    start = time.monotonic()
    credentials = make_credentials(target.user)
    log.info("verifying", entry=target.key, arch=target.arch, digest=target.digest)
    try:
        async with booter.boot(target, user_data(credentials)) as guest:
            await check_login(guest, credentials, check)
    except Exception as e:  # a full disk or a hung tool too: this entry fails, the others go on
        expected = isinstance(e, (CheckFailedError, PullError, SeedError, BootError))
        detail = str(e) if expected else _one_line(e)
        message = f"{target.key}: {detail}"
        log.error(
            "verify_failed", entry=target.key, arch=target.arch, error=message,
            exc_info=not expected,  # a surprise keeps its traceback in the log
        )  # fmt: skip
        result = Result(target.result.tags, message, "verify", target.digest)
        return Verdict(target.key, target.arch, "failed", detail, time.monotonic() - start, result)
    seconds = time.monotonic() - start
    log.info("verified", entry=target.key, arch=target.arch, seconds=round(seconds, 2))
    result = Result(target.result.tags, "", "verify", target.digest)
    return Verdict(target.key, target.arch, "verified", "echo hello", seconds, result)


def _one_line(e: Exception) -> str:
    """An unexpected error as one line: `No space left on device: '/w/disk.img'`."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: '{e.filename}'" if e.filename else e.strerror
    text = " ".join(redact(str(e)).split())  # masked before spaces are collapsed
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def verify_all(
    chosen: Sequence[Target | Skipped],
    booter: Booter,
    check: SshCheck,
    *,
    workers: int,
    dry_run: bool,
) -> list[Verdict]:
    """One verdict per chosen target or skip, in order."""
    verdicts: list[Verdict | None] = [None] * len(chosen)
    todo: list[tuple[int, Target]] = []
    for i, c in enumerate(chosen):
        if isinstance(c, Skipped):
            verdicts[i] = Verdict(c.key, c.arch, "skipped", c.why)
        elif why := booter.cannot_boot(c):
            log.warning("verify_skipped", entry=c.key, arch=c.arch, why=why)
            verdicts[i] = Verdict(c.key, c.arch, "skipped", f"cannot boot here: {why}")
        elif dry_run:
            verdicts[i] = Verdict(c.key, c.arch, "planned", f"would boot ({booter.describe(c)})")
        else:
            todo.append((i, c))
    gate = asyncio.Semaphore(workers)

    async def run(i: int, target: Target) -> None:
        async with gate:
            verdicts[i] = await _verify(target, booter, check)

    async with asyncio.TaskGroup() as group:
        for i, target in todo:
            group.create_task(run(i, target))
    return [v for v in verdicts if v is not None]


def render(verdicts: Sequence[Verdict], out: TextIO) -> None:
    """ENTRY, ARCH, RESULT: `verified in 8.4 s`, `failed: <why>`, `skipped: <why>`, or the
    dry run's `would boot (...)`."""
    rows = [("ENTRY", "ARCH", "RESULT")]
    for v in verdicts:
        if v.status == "verified":
            text = f"verified in {v.seconds:.1f} s"
        elif v.status == "planned":
            text = v.detail
        else:
            text = f"{v.status}: {v.detail}"
        rows.append((v.key, v.arch, text))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        out.write(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip() + "\n")
