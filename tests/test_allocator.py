"""A command keeps freed memory instead of faulting it back in (cli.py's docstring, issue 21).

Each run is a real process (`python -m containerdisks ...` through a probe). At exit, after the
command, the probe makes a stream's allocation pattern (256 KiB reads joined into 1 MiB chunks,
handed to a thread that makes smaller outputs, freed on another thread: what a push does per MiB)
over 256 MiB and writes the minor page faults it took. `--version` ends before any command runs
(glibc's defaults); `catalog` runs one (the thresholds fixed by `entrypoint`'s process), unless
the operator set glibc's own.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from tests.support.cli import probed

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's (mallopt)"
)

_PROBE = r"""
import atexit, os, queue, resource, runpy, sys, threading
def pattern():
    todo, done = queue.Queue(4), queue.Queue(4)
    def work():
        while (chunk := todo.get()) is not None:
            done.put(chunk[: len(chunk) * 5 // 8] + b"x")
        done.put(None)
    def drain():
        while done.get() is not None:
            pass
    threads = [threading.Thread(target=work), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(256):
        todo.put(b"".join([bytes(256 << 10) for _ in range(4)]))
    todo.put(None)
    for t in threads:
        t.join()
    with open(os.environ["PROBE_OUT"], "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
atexit.register(pattern)
sys.argv = ["containerdisks", *sys.argv[1:]]
runpy.run_module("containerdisks", run_name="__main__")
"""


def _faults(tmp_path: Path, *args: str, **env: str) -> int:
    out = tmp_path / "faults"
    probed(_PROBE, out, *args, cwd=tmp_path, **env)
    return int(out.read_text())


def test_a_command_keeps_freed_memory_instead_of_faulting_it_in_again(tmp_path: Path) -> None:
    defaults = _faults(tmp_path, "--version")
    command = _faults(tmp_path, "catalog", "--output", "json")
    # 256 MiB through glibc's defaults faults ~24,000 pages here, with the thresholds ~2,000
    assert defaults > 8_000
    assert command * 4 < defaults, (command, defaults)


def test_the_operators_own_allocator_settings_win(tmp_path: Path) -> None:
    # trim at every free: what an operator short of memory might ask glibc for
    theirs = ({"MALLOC_TRIM_THRESHOLD_": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    for env in theirs:
        assert _faults(tmp_path, "catalog", "--output", "json", **env) > 8_000, env
