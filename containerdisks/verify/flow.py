"""The one verify flow, whatever boots the guest: fresh key -> user data -> boot -> SSH check
-> the entry's result at stage `verify`.

`images verify --local` (qemu on this host) and `images verify` (KubeVirt) differ only in the
`Booter` they hand in; credentials, the check and the results record are here once.
`images verify` (commands/verify.py) runs the targets in parallel (`--workers`): a failure in
one never stops the others, and a cancellation (a signal) ends every boot through its own
cleanup before it propagates.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from containerdisks.engine.results import Result
from containerdisks.oci.redact import redact
from containerdisks.verify.pull import PullError
from containerdisks.verify.seed import SeedError, make_credentials, user_data
from containerdisks.verify.ssh import CheckFailedError, Guest, SshCheck, check_login
from containerdisks.verify.target import Failed, Skipped, Target

__all__ = ["BootError", "Booter", "Verdict", "triage", "verify"]

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


async def verify(target: Target, booter: Booter, check: SshCheck) -> Verdict:
    """Boot `target`, log in, and say how it went; an error fails this entry alone."""
    start = time.monotonic()
    credentials = make_credentials(target.user)
    log.info("verifying", entry=target.key, arch=target.arch, digest=target.digest)
    try:
        async with booter.boot(target, user_data(credentials)) as guest:
            if target.user:
                await check_login(guest, credentials, check)
            else:
                await _stays_up(guest, min(check.timeout, NO_USER_WATCH))
    except Exception as e:  # a full disk or a hung tool too: this entry fails, the others go on
        expected = isinstance(e, (CheckFailedError, PullError, SeedError, BootError))
        detail = str(e) if expected else _one_line(e)
        message = f"{target.key}: {detail}"
        log.error(
            "verify_failed", entry=target.key, arch=target.arch, error=message,
            exc_info=not expected,  # a surprise keeps its traceback in the log
        )  # fmt: skip
        result = target.result.after("verify", message, target.digest)
        return Verdict(target.key, target.arch, "failed", detail, time.monotonic() - start, result)
    seconds = time.monotonic() - start
    log.info("verified", entry=target.key, arch=target.arch, seconds=round(seconds, 2))
    result = target.result.after("verify", "", target.digest)
    how = LOGGED_IN if target.user else "booted (no login user: no SSH check)"
    return Verdict(target.key, target.arch, "verified", how, seconds, result)


#: A verdict's detail when the SSH login ran `echo hello`.
LOGGED_IN = "echo hello"
#: Seconds a guest without a login user is watched after it booted; a failure the booter can
#: see (no bootable disk, a kernel panic, the VM gone) in that time fails it.
NO_USER_WATCH = 10.0


async def _stays_up(guest: Guest, seconds: float) -> None:
    """medius's check of an entry without a user (cirros): the VM is up, nothing else. Here
    also: it does not fail within `seconds` of booting."""
    deadline = time.monotonic() + seconds
    while True:
        if why := guest.failure():
            raise CheckFailedError("no-boot", f"did not boot: {why}")
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _one_line(e: Exception) -> str:
    """An unexpected error as one line: `No space left on device: '/w/disk.img'`."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: '{e.filename}'" if e.filename else e.strerror
    text = " ".join(redact(str(e)).split())  # masked before spaces are collapsed
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def triage(c: Target | Skipped | Failed, booter: Booter, *, dry_run: bool) -> Target | Verdict:
    """The verdict a chosen target gets without a boot (skipped, failed in an earlier stage, or
    the dry run's plan), or the target itself when it is to be booted."""
    if isinstance(c, Skipped):
        return Verdict(c.key, c.arch, "skipped", c.why)
    if isinstance(c, Failed):
        said = c.error.removeprefix(f"{c.key}: ")
        return Verdict(c.key, c.arch, "failed", f"failed in stage {c.stage}: {said}")
    if why := booter.cannot_boot(c):
        log.warning("verify_skipped", entry=c.key, arch=c.arch, why=why)
        return Verdict(c.key, c.arch, "skipped", f"cannot boot here: {why}")
    if dry_run:
        return Verdict(c.key, c.arch, "planned", f"would boot ({booter.describe(c)})")
    return c
