"""The daemon's HTTP server under a hostile client: `serve` as a real process, raw sockets.

- A slowloris (one header byte a second) is disconnected once `http_header_timeout` has passed.
- Idle sockets past `http_max_connections` are closed at once, the process holds no more than
  the cap (its socket descriptors in /proc), and `/healthz` still answers a client that sends its
  request.
- A malformed request line gets 400 and leaves only JSON lines on stderr: no traceback.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.daemon.conftest import Daemon, Fedora, StartDaemon
from tests.support.registry import Registry

HEADER_TIMEOUT = 2.0
CAP = 20


@pytest.fixture
def daemon(registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon) -> Daemon:
    """A dry-run daemon (nothing is published) after its first pass, with small HTTP limits."""
    srv, _, _ = fedora_upstream
    env = {
        "CONTAINERDISKS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "CONTAINERDISKS_HTTP_MAX_CONNECTIONS": str(CAP),
    }
    d = start_daemon(
        srv, f"{registry.host}/cd", "--dry-run=true", "--log-level", "debug", interval=3600.0,
        env=env,
    )  # fmt: skip
    d.ready()
    return d


def sockets_of(pid: int) -> int:
    """Socket descriptors the process holds."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:
            continue  # closed meanwhile
    return count


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the other end closes (EOF or reset) within `timeout` seconds."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def read_to_end(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """What the peer sends until it closes (bounded by `timeout`)."""
    data = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


@contextmanager
def idle_sockets(port: int, n: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        socks = []
        for _ in range(n):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            socks.append(s)
        yield socks


def test_a_slowloris_is_dropped_after_the_header_timeout(daemon: Daemon) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 30
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        start = time.monotonic()
        dropped_after = None
        for byte in request:  # bounded: 30+ s of bytes, the timeout is 2 s
            try:
                s.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                dropped_after = time.monotonic() - start
                break
            if closed_by_peer(s, 1.0):
                dropped_after = time.monotonic() - start
                break
    assert dropped_after is not None, "the slow client was never disconnected"
    assert HEADER_TIMEOUT - 0.5 < dropped_after < HEADER_TIMEOUT + 6
    assert 200 == daemon.code("/healthz")


def test_idle_sockets_past_the_cap_are_closed_and_healthz_answers(daemon: Daemon) -> None:
    baseline = sockets_of(daemon.proc.pid)
    with idle_sockets(daemon.port, 3 * CAP) as socks:
        start = time.monotonic()
        code = daemon.code("/healthz")
        took = time.monotonic() - start
        assert 200 == code
        assert took < 3.0
        # The daemon holds at most the cap (plus the listener and its own clients' sockets,
        # counted in the baseline; a little slack for a connection being torn down).
        held = sockets_of(daemon.proc.pid)
        assert held <= baseline + CAP + 3, (baseline, held)
        # The excess was closed at once, well before the header timeout.
        closed = sum(closed_by_peer(s, 0.0) for s in socks)
        assert closed >= 2 * CAP, closed
    # The rest go after the header timeout.
    daemon.wait_for("idle connections closed", lambda: sockets_of(daemon.proc.pid) <= baseline)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/9.Z\r\nHost: x\r\n\r\n",  # a bad status line
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01 NOT HTTP\r\n\r\n",  # a bad second one
    ],
)
def test_a_malformed_request_logs_one_json_line(daemon: Daemon, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(garbage)
        answer = read_to_end(s)
    assert b"HTTP/1.1 400 Bad Request" in answer or b"HTTP/1.0 400 Bad Request" in answer, answer
    daemon.wait_for("the bad request logged", lambda: "Error handling request" in daemon.log_text())
    assert daemon.events("http_bad_request")
    text = daemon.log_text()
    assert "Traceback" not in text
    for line in text.splitlines():
        json.loads(line)  # every line of stderr is one JSON event
    assert 200 == daemon.code("/healthz")
