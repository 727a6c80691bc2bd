"""On a terminal the logs are a readable console with progress bars for downloads and pushes.

`serve --once` runs with stderr on a pseudo-terminal; fault proxies slow the download and the
upload down so that transfers last long enough for bars to be drawn. The bars (`fetch <file>`,
`push <repo>`) sit below the log lines and are erased before each line and at the end, so no
line is torn.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

from containerdisks.log import ProgressConsole, format_bar
from tests.daemon.conftest import Fedora, serve_command
from tests.support.cli import clean_env
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.registry import Registry

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_all(fd: int, proc: subprocess.Popen[bytes], limit: float) -> bytes:
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


def test_a_terminal_gets_console_logs_and_progress_bars(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    srv, _, _ = fedora_upstream
    with FaultProxy(registry.url) as proxy, FaultProxy(srv.base_url) as slow_upstream:
        # Both ends slowed down (per 64 KiB chunk), so transfers outlast a few redraws.
        proxy.add(Rule("PATCH", r"/v2/cd/fedora/blobs/uploads/", "slow", delay=0.1, times=None))
        slow_upstream.add(Rule("GET", r"\.qcow2$", "slow", delay=0.1, times=None))
        command = serve_command(
            srv,
            f"{proxy.host}/cd",
            tmp_path,
            "--once",
            "--focus",
            "fedora:40",
            "--upstream-mirror",
            f"https://={slow_upstream.url}/",
        )
        command.remove("--log-format")
        command.remove("json")
        controller, terminal = pty.openpty()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=clean_env(TERM="xterm"),
            cwd=tmp_path,
        )
        os.close(terminal)
        try:
            raw = read_all(controller, proc, 90)
        finally:
            os.close(controller)
        assert 0 == proc.wait(30)
    text = raw.decode(errors="replace")
    plain = _ANSI.sub("", text)
    assert "push cd/fedora" in plain
    assert "fetch Fedora-Cloud-Base" in plain
    assert "%" in plain
    assert "\x1b[J" in text  # bars erased before the next line
    assert "synced" in plain
    assert not plain.lstrip().startswith("{")  # not JSON
    # The bars are erased at the end: after the last erase there are log lines only.
    tail = _ANSI.sub("", text.rsplit("\x1b[J", 1)[-1])
    assert "fetch " not in tail
    assert "push cd/" not in tail


class Terminal:
    def __init__(self) -> None:
        self.data = ""

    def write(self, s: str) -> int:
        self.data += s
        return len(s)

    def flush(self) -> None:
        pass


def test_bars_are_redrawn_below_each_line_and_cleared() -> None:
    term = Terminal()
    console = ProgressConsole(term)  # type: ignore[arg-type]
    console.bars(["bar one", "bar two"])
    console.line("a log line")
    console.bars([])
    assert "bar one\nbar two\n\x1b[2F\x1b[Ja log line\nbar one\nbar two\n\x1b[2F\x1b[J" == term.data


def test_format_bar() -> None:
    line = format_bar("fetch disk.qcow2", 512 << 20, 1 << 30, 2.0)
    assert line.startswith("fetch disk.qcow2")
    assert " 50.0% 512.0 MiB/1.0 GiB 256.0 MiB/s" in line
    assert "push cd/fedora" + " " * 26 + " 3.0 MiB" == format_bar(
        "push cd/fedora", 3 << 20, None, 0
    )
