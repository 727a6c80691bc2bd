"""On a terminal a one-shot publishing run says the plan first, then progress, then the outcome,
and its log does not say per entry what the plan rows and the outcome say once.

Real processes with stderr on a pseudo-terminal (tests/support/terminal.py) and stdout on a
pipe, as a person's shell and a script reading stdout see them: `serve --once` (the single pass
`images push` runs too) into Debian's registry from a loopback Fedora tree, slowed down by fault
proxies so that progress bars are drawn; and `images push` of the default catalog with every
upstream host sent to a closed loopback port (the README's first command, offline).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.daemon.conftest import Fedora, once_on_terminal, serve_command
from tests.support.cli import clean_env
from tests.support.loopback import free_port
from tests.support.registry import Registry
from tests.support.terminal import run_on_pty

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PLAN_HEADER = ["ENTRY", "ARCH", "UPSTREAM", "PUBLISHED", "ACTION"]
#: The hosts the default catalog's sources read first (config/catalog.yaml, the plugins).
_HOSTS = (
    "getfedora.org",
    "cloud.debian.org",
    "cloud.centos.org",
    "repo.almalinux.org",
    "cloud-images.ubuntu.com",
    "download.opensuse.org",
)


def _lines(terminal: str) -> list[str]:
    return [_ANSI.sub("", line).strip("\r").rstrip() for line in terminal.split("\n")]


def _event(line: str) -> str:
    """The event of a console log line: `<time> [<level>  ] <event>  key=value ...`."""
    return line.partition("] ")[2].split()[0]


def _plan_rows(lines: list[str]) -> list[list[str]]:
    """The plan's rows as printed under its header (split into cells)."""
    return [line.split() for line in lines if line.startswith("fedora:")]


def test_a_publishing_run_on_a_terminal_prints_the_plan_before_any_transfer(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    srv, _, _ = fedora_upstream
    target_flags = ("--once", "--focus", "fedora:40")  # as `once_on_terminal` runs it
    # What the dry run prints on stdout: the rows the terminal must show first.
    dry = subprocess.run(
        serve_command(srv, f"{registry.host}/cd", tmp_path, *target_flags, "--dry-run=true"),
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert 0 == dry.returncode, dry.stderr[-2000:]
    dry_lines = dry.stdout.splitlines()
    assert _PLAN_HEADER == dry_lines[0].split()
    expected = [line.split() for line in dry_lines[1:]]
    assert expected
    assert {"build"} == {row[-1] for row in expected}

    status, stdout, terminal = once_on_terminal(
        tmp_path, registry, fedora_upstream, 80, "--log-format", "auto"
    )
    assert 0 == status, terminal[-3000:]
    lines = _lines(terminal)
    header = next(i for i, line in enumerate(lines) if line.split() == _PLAN_HEADER)
    assert expected == _plan_rows(lines)  # the dry run's rows, each once
    first_row = next(i for i, line in enumerate(lines) if line.startswith("fedora:40"))
    first_bar = next(i for i, line in enumerate(lines) if line.startswith(("fetch ", "push cd/")))
    assert header < first_row < first_bar, lines
    # The rows said the plan: no `planned` line repeats it; the outcome is stdout's only table.
    assert not any("planned" in line for line in lines), lines
    out = stdout.splitlines()
    assert ["ENTRY", "ARCH", "OUTCOME", "DIGEST", "TAGS"] == out[0].split()
    assert {(row[0], row[1]) for row in expected} == {tuple(o.split()[:2]) for o in out[1:]}
    assert {"published"} == {o.split()[2] for o in out[1:]}
    assert "ACTION" not in stdout

    # Again, up to date, asked for JSON: the terminal shows the plan, stdout is one document.
    again = serve_command(
        srv, f"{registry.host}/cd", tmp_path, *target_flags, "--log-format", "auto"
    )
    status, stdout, terminal = run_on_pty(
        [*again, "--output", "json"], columns=200, env=clean_env(TERM="xterm"), cwd=tmp_path
    )
    assert 0 == status, terminal[-3000:]
    rows = _plan_rows(_lines(terminal))
    assert {(r[0], r[1]) for r in expected} == {(r[0], r[1]) for r in rows}
    assert {"up-to-date"} == {r[-1] for r in rows}
    doc = json.loads(stdout)
    assert {"up-to-date"} == {a["outcome"] for e in doc["entries"] for a in e["arches"]}


def _offline_command(cwd: Path) -> tuple[list[str], dict[str, int]]:
    """README command 1 (`containerdisks images push`, default catalog) with each upstream host
    sent to its own closed loopback port, anything else to one more, and the registry to a
    closed port too: nothing leaves the machine."""
    ports = {host: free_port() for host in _HOSTS}
    mirrors = [f"https://{host}/=http://127.0.0.1:{port}/" for host, port in ports.items()]
    mirrors += [
        f"https://=http://127.0.0.1:{free_port()}/",
        f"http://=http://127.0.0.1:{free_port()}/",
    ]
    command = [sys.executable, "-m", "containerdisks", "images", "push"]
    for mirror in mirrors:
        command += ["--upstream-mirror", mirror]
    command += ["--source-registry", f"127.0.0.1:{free_port()}/containerdisks"]
    command += ["--work-dir", str(cwd / "work")]
    return command, ports


def test_offline_the_default_catalog_says_each_unreachable_host_once(tmp_path: Path) -> None:
    command, ports = _offline_command(tmp_path)
    # One attempt per request: a refused connection is retried otherwise (`upstream_retry` lines,
    # kept: the outcome does not say a retry that worked), where a name that does not resolve
    # offline is not.
    env = clean_env(TERM="xterm", CONTAINERDISKS_RETRIES="1")
    status, stdout, terminal = run_on_pty(command, columns=120, env=env, cwd=tmp_path)
    assert 1 == status, terminal[-3000:]
    out = stdout.splitlines()
    assert len(_HOSTS) == len(out), stdout
    named = {re.search(r"127\.0\.0\.1:(\d+)", line).group(1) for line in out}  # type: ignore[union-attr]
    assert {str(p) for p in ports.values()} == named, stdout
    assert all("  failed: " in line for line in out)
    # The log on the terminal: the pass's own lines, nothing per entry.
    events = [_event(line) for line in _lines(terminal) if line.strip()]
    assert ["pass_started", "discovered", "pass_finished"] == events, terminal

    # `--log-level debug` brings the folded events back; JSON logs (off a terminal) keep them.
    status, _, debug = run_on_pty(
        [*command, "--log-level", "debug"], columns=120, env=env, cwd=tmp_path
    )
    assert 1 == status
    assert "plan_failed" in debug
    assert "discovery_failed" in debug
    piped = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert 1 == piped.returncode
    assert stdout == piped.stdout
    logged = [json.loads(line)["event"] for line in piped.stderr.splitlines()]
    assert {"discovery_failed", "plan_failed", "entries_failed"} <= set(logged)
