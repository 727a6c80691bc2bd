"""A real process with stderr on a pseudo-terminal of a given size, as a person's shell runs it.

The pty's size is set with TIOCSWINSZ, so the process reads the columns it would in a terminal
emulator of that width; everything it writes there (escape sequences included) is returned, and
stdout, a pipe, separately (what a script reading stdout gets).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

__all__ = ["read_all", "run_on_pty"]


def read_all(fd: int, proc: subprocess.Popen[bytes], limit: float) -> bytes:
    """What `proc` writes to the pty `fd` until it closes or exits, at most `limit` seconds."""
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def run_on_pty(
    command: list[str], *, columns: int, env: dict[str, str], cwd: Path, limit: float = 90
) -> tuple[int, str, str]:
    """Run `command` with stderr on a `columns` x 24 pty and stdout on a pipe: its exit status,
    its stdout and everything written to the terminal."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with open(cwd / "stdout.txt", "wb+") as stdout:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=terminal, env=env, cwd=cwd
        )
        os.close(terminal)
        try:
            raw = read_all(controller, proc, limit)
        finally:
            os.close(controller)
        status = proc.wait(30)
        stdout.seek(0)
        return status, stdout.read().decode(), raw.decode(errors="replace")
