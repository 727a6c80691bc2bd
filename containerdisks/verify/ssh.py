"""The check that a guest is really up: an SSH login with the injected key runs `echo hello`.

Shared by every way of booting (local qemu, KubeVirt through a port-forward bridge): the guest
is reached at a host and port, and `Guest.failure()` says when waiting is pointless.

Decisions (docs/architecture.md "How a verify flows"):
- Wait for the server's `SSH-2.0-` identification line, not for the port: qemu's user networking,
  like a port-forward, accepts TCP connections long before anything listens in the guest.
- Then log in with asyncssh (the key from memory, no host-key check: the VM was born a minute
  ago) and require exit status 0 and `hello` on stdout.
- Retries are bounded twice: by the deadline and by a number of attempts (medius: 30), one
  `containerdisks.retry.Budget`.
  A refused key is retried too, because real images start sshd before cloud-init has written
  the key; when the attempts or the time run out, the error says what the last attempt saw.
- What counts as an attempt is the booter's call (`SshCheck.count_unanswered`): through a
  KubeVirt port-forward every try counts, answered or not (each is one of medius's 30 x 10 s);
  for a local qemu guest the wait for the banner is the boot itself, bounded by the deadline
  only, and attempts count logins once the guest answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from containerdisks.retry import Budget
from containerdisks.verify.seed import SshLogin
from containerdisks.verify.sshlib import asyncssh

__all__ = ["CheckFailedError", "Guest", "SshCheck", "check_login"]

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class Guest(Protocol):
    """A booted machine whose SSH port is reachable at `ssh_host:ssh_port`."""

    ssh_host: str
    ssh_port: int

    def failure(self) -> str | None:
        """Why the guest can no longer come up, or None while it still may."""
        ...


class CheckFailedError(Exception):
    """The guest did not pass; `kind` is one of `no-boot`, `no-banner`, `key-refused`,
    `ssh-error`, `wrong-output`, and the message is one line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SshCheck:
    """How hard to try: the whole wait, attempts, the pause between tries; whether a try that
    got no SSH banner counts as an attempt (`count_unanswered`) or only logins do."""

    timeout: float = 600.0
    attempts: int = 30
    count_unanswered: bool = False
    pause: float = 0.5
    banner_timeout: float = 3.0
    login_timeout: float = 30.0


_BANNER_LINES = 20  # lines a server may send before its identification


async def _banner(host: str, port: int, wait: float) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
    except (OSError, TimeoutError):
        return False
    try:
        async with asyncio.timeout(wait):
            # RFC 4253 4.2: a server may send other lines before its identification; 1.99 is
            # a server that speaks 2.0 as well (5.1). Anything else is not (yet) our server.
            for _ in range(_BANNER_LINES):
                line = await reader.readline()
                if line.startswith((b"SSH-2.0-", b"SSH-1.99-")):
                    return True
                if not line or line.startswith(b"SSH-"):
                    return False
            return False
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _login(guest: Guest, credentials: SshLogin, wait: float) -> str:
    """One login; the output of `echo hello`, or raises asyncssh / OS errors."""
    async with asyncssh.connect(
        guest.ssh_host,
        port=guest.ssh_port,
        username=credentials.user,
        client_keys=[credentials.key],
        known_hosts=None,
        agent_path=None,
        config=[],
        connect_timeout=wait,
        login_timeout=wait,
    ) as connection:
        result = await connection.run("echo hello", check=False, timeout=wait)
    if result.exit_status != 0:
        raise CheckFailedError(
            "wrong-output", f"`echo hello` exited with status {result.exit_status}"
        )
    return result.stdout if isinstance(result.stdout, str) else ""


async def check_login(
    guest: Guest,
    credentials: SshLogin,
    check: SshCheck,
    *,
    clock: Clock = time.monotonic,
) -> float:
    """Wait for the guest and log in; the seconds it took, or raises `CheckFailedError`."""
    start = clock()
    budget = Budget(start + check.timeout, check.attempts, clock)
    banner_seen = False
    last = ""
    while True:
        why = guest.failure()
        if why is not None:
            raise CheckFailedError("no-boot", f"did not boot: {why}")
        if budget.expired():
            break
        left = budget.left()
        window = min(check.banner_timeout, left)
        if await _banner(guest.ssh_host, guest.ssh_port, window):
            if not banner_seen:
                log.info("ssh_banner", port=guest.ssh_port, seconds=round(clock() - start, 2))
            banner_seen = True
            budget.spend()
            try:
                out = await _login(guest, credentials, max(1.0, min(check.login_timeout, left)))
            except asyncssh.PermissionDenied:
                last = "key-refused"
            except (OSError, TimeoutError, asyncssh.Error) as e:
                last = f"ssh-error: {type(e).__name__}: {e}"
            else:
                if out.strip() != "hello":
                    raise CheckFailedError(
                        "wrong-output", f"`echo hello` printed {out.strip()[:80]!r}, not 'hello'"
                    )
                return clock() - start
        elif check.count_unanswered and window == check.banner_timeout:
            # (a wait the deadline cut short says nothing of the guest: it counts for nothing)
            budget.spend()
            last = "no-banner"
        if budget.spent:
            break
        await budget.pause(check.pause)
    return _give_up(credentials, check, banner_seen, budget.used, last)


def _give_up(
    credentials: SshLogin, check: SshCheck, banner_seen: bool, attempts: int, last: str
) -> float:
    noun = "attempt" if check.count_unanswered else "login attempt"
    tried = f"after {attempts} {noun}{'s' if attempts != 1 else ''}"
    if not banner_seen:
        if attempts >= check.attempts:
            raise CheckFailedError("no-banner", f"no SSH banner {tried}")
        raise CheckFailedError("no-banner", f"no SSH banner within {check.timeout:g} s")
    if last == "no-banner":
        raise CheckFailedError("no-banner", f"SSH stopped answering {tried}")
    if last == "key-refused":
        raise CheckFailedError(
            "key-refused", f"SSH refused the key for user {credentials.user!r} {tried}"
        )
    raise CheckFailedError(
        "ssh-error", f"SSH login failed {tried}: {last.removeprefix('ssh-error: ')}"
    )
