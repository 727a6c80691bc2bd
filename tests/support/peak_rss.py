"""Run a command and measure its own peak RSS, untouched by the test process's size.

`wait4`'s `ru_maxrss` of a child that pytest forks is wrong for our purpose: Linux carries the
high-water mark of the forked copy of pytest (hundreds of MiB once a test has built a bomb) over
the `exec`, so every child would report at least pytest's size. The command is therefore started
by a small launcher process (`python -c`, a few MiB): the launcher's child inherits only the
launcher's mark, and the launcher reports that child's `ru_maxrss` (as GNU time's `%M` does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# argv: report-file, address-space limit (0: none), command...
_LAUNCHER = """
import os, resource, sys
report, limit, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
pid = os.posix_spawnp(args[0], args, os.environ)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass
class Measured:
    returncode: int
    peak_rss_mib: float
    seconds: float


def run_measured(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    timeout: float,
    address_space: int = 0,
) -> Measured:
    """Run `args` to its end (killed after `timeout` seconds: then the test fails)."""
    report = cwd / f".peak-rss-{os.getpid()}-{time.monotonic_ns()}"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(report), str(address_space), *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    try:
        returncode = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{args[:4]} still running after {timeout}s") from None
    seconds = time.monotonic() - started
    try:
        kib = int(report.read_text())
    finally:
        report.unlink(missing_ok=True)
    return Measured(returncode, kib / 1024, seconds)
