"""On a terminal the logs are a readable console with progress bars for downloads and pushes.

`serve --once` runs with stderr on a pseudo-terminal; fault proxies slow the download and the
upload down so that transfers last long enough for bars to be drawn. The bars (`fetch <file>`,
`push <repo>`) sit below the log lines and are erased before each line and at the end, so no
line is torn. At 80 and 200 columns (the pty's size set with TIOCSWINSZ) no bar is wider than
the terminal, and the final screen, as a terminal emulator (pyte) shows it, holds no fragment
of a bar. Off a terminal, JSON logs carry a `progress` event per transfer instead.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyte
import pytest

from containerdisks.log import ProgressConsole, format_bar
from tests.daemon.conftest import Fedora, once_on_terminal, serve_command
from tests.support.cli import clean_env
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.registry import Registry

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_a_terminal_gets_console_logs_and_progress_bars(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    status, text = run_on_terminal(tmp_path, registry, fedora_upstream, 200)
    assert 0 == status, text[-3000:]
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


def run_on_terminal(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, columns: int
) -> tuple[int, str]:
    """`serve --once --focus fedora:40` with stderr on a pty of `columns` x 24, both ends slowed
    down so that bars are drawn: its exit status and everything written to the terminal."""
    status, _, text = once_on_terminal(
        tmp_path, registry, fedora_upstream, columns, "--log-format", "console"
    )
    return status, text


@pytest.mark.parametrize("columns", [80, 200])
def test_bars_fit_the_terminal_and_leave_no_fragment(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, columns: int
) -> None:
    status, text = run_on_terminal(tmp_path, registry, fedora_upstream, columns)
    assert 0 == status, text[-3000:]
    lines = [_ANSI.sub("", line).strip("\r") for line in text.split("\n")]
    bars = [line for line in lines if line.startswith(("fetch ", "push cd/"))]
    assert bars, text[-3000:]
    assert [] == [line for line in bars if len(line) >= columns]
    assert any("%" in line and "ETA" in line for line in bars)
    # The screen a person sees at the end: log lines only, not a piece of a bar.
    screen = pyte.Screen(columns, 24)
    pyte.Stream(screen).feed(text)
    shown = [row.rstrip() for row in screen.display if row.strip()]
    assert any("pass_finished" in row for row in shown), shown
    fragments = [r for r in shown if "█" in r or "·" in r or "MiB/s" in r or " KiB" in r]
    assert [] == fragments, shown


def test_json_logs_carry_a_progress_event_per_transfer(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    srv, _, _ = fedora_upstream
    with FaultProxy(srv.base_url) as slow_upstream:
        slow_upstream.add(Rule("GET", r"\.qcow2$", "slow", delay=0.1, times=None))
        command = serve_command(
            srv,
            f"{registry.host}/cd",
            tmp_path,
            "--once",
            "--focus",
            "fedora:40",
            "--upstream-mirror",
            f"https://={slow_upstream.url}/",
        )
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(CONTAINERDISKS_PROGRESS_INTERVAL="0.3"),
            cwd=tmp_path,
        )
    assert 0 == result.returncode, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stderr.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    fetches = [e for e in progress if e["transfer"].startswith("fetch Fedora-Cloud-Base")]
    assert len(fetches) >= 2, progress
    assert all(e["total"] and 0 <= e["bytes"] <= e["total"] for e in fetches)
    assert all(e["rate"] > 0 and e["eta"] is not None and e["eta"] >= 0 for e in fetches)
    for label in {e["transfer"] for e in fetches}:  # each transfer's bytes only grow
        done = [e["bytes"] for e in fetches if e["transfer"] == label]
        assert done == sorted(done)
    assert "progress" not in {e["event"] for e in events if e["level"] != "info"}


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
    line = format_bar("fetch disk.qcow2", 512 << 20, 1 << 30, 2.0, columns=120)
    assert line.startswith("fetch disk.qcow2")
    assert line.endswith(" 50.0% 512.0 MiB/1.0 GiB 256.0 MiB/s ETA 0:02")
    assert "push cd/fedora" + " " * 26 + " 3.0 MiB" == format_bar(
        "push cd/fedora", 3 << 20, None, 0
    )


@pytest.mark.parametrize("columns", [20, 40, 80, 200])
def test_a_bar_is_narrower_than_the_terminal(columns: int) -> None:
    label = "fetch Fedora-Cloud-Base-Generic-40-1.14.x86_64.qcow2"
    line = format_bar(label, 512 << 20, 1 << 30, 2.0, columns=columns)
    assert len(line) < columns
    assert line.startswith(label[: min(len(label), columns // 4)])
