"""The daemon under test: `python -m containerdisks serve` as a real process, and what it needs.

- `fedora_upstream`: a loopback upstream serving releases.json and real qcow2 images, and
  the tree's root (to change an image while the daemon runs).
- `start_daemon(target, *flags, env=...)`: starts `serve` on a free loopback port with JSON logs
  into a file, a short interval and the upstream mirrored to the local server; returns a `Daemon`
  that reads its HTTP endpoints and log events and sends it signals. Every process is killed at
  the end of the test if it is still running; every wait is bounded.
- `once_on_terminal(...)`: `serve --once --focus fedora:40` with stderr on a pseudo-terminal,
  upstream and registry slowed down so that progress bars are drawn.
- `restart_registry` / `stop_registry`: take the real registry away and bring it back on the
  same port with the same storage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import clean_env, default_focus
from tests.support.disks import fedora_tree
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.loopback import free_port
from tests.support.registry import Registry
from tests.support.terminal import run_on_pty
from tests.support.upstream_server import UpstreamServer

Fedora = tuple[UpstreamServer, dict[tuple[str, str], bytes], Path]


@pytest.fixture
def fedora_upstream(tmp_path: Path) -> Iterator[Fedora]:
    root = tmp_path / "up"
    disks = fedora_tree(root)
    with UpstreamServer(root) as srv:
        yield srv, disks, root


class Daemon:
    """One `serve` process: its endpoints, its log events, signals."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.log_path = cwd / f"{name}.log"
        self.started = time.monotonic()
        self.args = [*args, "--listen", f"127.0.0.1:{self.port}"]
        with self.log_path.open("w") as err:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=cwd,
            )

    # -- HTTP -----------------------------------------------------------------------------------

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        """(status, body); status 0 when nothing answers."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def code(self, path: str) -> int:
        return self.get(path)[0]

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert 200 == code, body
        data: dict[str, Any] = json.loads(body)
        return data

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample: (name, sorted labels) -> value."""
        code, body = self.get("/metrics")
        assert 200 == code
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    # -- logs -----------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    # -- waiting and signals ----------------------------------------------------------------------

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> float:
        """Poll `predicate` until true; return the seconds waited. Fails with the log tail."""
        start = time.monotonic()
        while True:
            if predicate():
                return time.monotonic() - start
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited ({self.proc.returncode}) waiting for {what}:\n"
                            f"{self.log_text()[-4000:]}")  # fmt: skip
            if time.monotonic() - start > timeout:
                pytest.fail(f"timed out after {timeout}s waiting for {what}:\n"
                            f"{self.log_text()[-4000:]}")  # fmt: skip
            time.sleep(0.05)

    def ready(self, timeout: float = 60.0) -> None:
        self.wait_for("/readyz 200", lambda: self.code("/readyz") == 200, timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


StartDaemon = Callable[..., Daemon]


def serve_command(
    srv: UpstreamServer, target: str, cwd: Path, *flags: str, interval: float = 1.0
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "containerdisks",
        "serve",
        "--dry-run=false",
        *default_focus(flags),
        "--source-registry",
        target,
        "--log-format",
        "json",
        "--work-dir",
        str(cwd / "work"),
        "--interval",
        str(interval),
        *srv.mirror_args(),
        *flags,
    ]


def once_on_terminal(
    tmp_path: Path, registry: Registry, fedora: Fedora, columns: int, *flags: str
) -> tuple[int, str, str]:
    """`serve --once --focus fedora:40 *flags` into `registry` with stderr on a pty of `columns`
    x 24 and stdout on a pipe, the qcow2 downloads and the blob uploads slowed down (fault
    proxies) so that bars are drawn: its exit status, its stdout and the terminal's text."""
    srv, _, _ = fedora
    with FaultProxy(registry.url) as proxy, FaultProxy(srv.base_url) as slow_upstream:
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
            *flags,
        )
        return run_on_pty(command, columns=columns, env=clean_env(TERM="xterm"), cwd=tmp_path)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    started: list[Daemon] = []

    def start(
        srv: UpstreamServer,
        target: str,
        *flags: str,
        interval: float = 1.0,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        command = serve_command(srv, target, tmp_path, *flags, interval=interval)
        daemon = Daemon(command, tmp_path, clean_env(**(env or {})), f"serve-{len(started)}")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


# -- the registry going away and coming back ------------------------------------------------------


def stop_registry(reg: Registry) -> None:
    assert reg.process is not None
    reg.process.send_signal(signal.SIGTERM)
    reg.process.wait(timeout=10)


@pytest.fixture
def restart_registry() -> Iterator[Callable[[Registry], None]]:
    extra: list[subprocess.Popen[bytes]] = []

    def restart(reg: Registry) -> None:
        """Start the registry again: same config, port and storage."""
        with reg.log_path.open("ab") as log:
            proc = subprocess.Popen(
                ["docker-registry", "serve", str(reg.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=reg.workdir,
            )
        extra.append(proc)
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{reg.url}/v2/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    message = f"registry did not come back:\n{reg.log_text()[-2000:]}"
                    raise RuntimeError(message) from None
                time.sleep(0.05)

    yield restart
    for proc in extra:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
