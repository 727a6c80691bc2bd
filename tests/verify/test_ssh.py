"""The SSH check against a real SSH server on loopback (asyncssh's): the banner, the key, the
output, and the bounds on retrying. The boots themselves are in test_verify_local.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from containerdisks.verify.seed import make_credentials, user_data
from containerdisks.verify.ssh import CheckFailedError, SshCheck, _banner, check_login
from containerdisks.verify.sshlib import asyncssh


@dataclass
class FakeGuest:
    """A "guest" that is the SSH server below (the server is real; only the machine is not)."""

    ssh_port: int
    ssh_host: str = "127.0.0.1"
    dead: str | None = None

    def failure(self) -> str | None:
        return self.dead


@asynccontextmanager
async def ssh_server(authorized: str, output: str, status: int = 0) -> AsyncIterator[int]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
        assert "echo hello" == process.command
        process.stdout.write(output)
        process.exit(status)

    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(authorized),
        process_factory=handle,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_the_right_key_and_hello_pass() -> None:
    credentials = make_credentials("fedora")
    assert f"  - {credentials.public}\n" in user_data(credentials)
    assert "# The default username is: fedora" in user_data(credentials)
    async with ssh_server(credentials.public, "hello\n") as port:
        seconds = await check_login(FakeGuest(port), credentials, SshCheck(timeout=20))
    assert 0 <= seconds < 20


@pytest.mark.parametrize(
    ("output", "status", "message"),
    [
        ("goodbye\n", 0, "`echo hello` printed 'goodbye', not 'hello'"),
        ("hello\n", 3, "`echo hello` exited with status 3"),
    ],
)
async def test_wrong_output_fails_at_once(output: str, status: int, message: str) -> None:
    credentials = make_credentials("root")
    async with ssh_server(credentials.public, output, status) as port:
        with pytest.raises(CheckFailedError) as e:
            await check_login(FakeGuest(port), credentials, SshCheck(timeout=20))
    assert ("wrong-output", message) == (e.value.kind, str(e.value))


async def test_another_key_is_refused_after_the_bounded_attempts() -> None:
    credentials = make_credentials("root")
    other = make_credentials("root")
    async with ssh_server(other.public, "hello\n") as port:
        with pytest.raises(CheckFailedError) as e:
            await check_login(FakeGuest(port), credentials, SshCheck(timeout=30, attempts=2))
    assert "key-refused" == e.value.kind
    assert "SSH refused the key for user 'root' after 2 login attempts" == str(e.value)
    assert "PRIVATE" not in repr(credentials)


async def test_a_port_that_accepts_but_never_speaks_ssh_is_no_banner() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # like slirp's hostfwd before the guest listens
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(CheckFailedError) as e:
            await check_login(
                FakeGuest(port),
                make_credentials("root"),
                SshCheck(timeout=1.5, banner_timeout=0.3, pause=0.1),
            )
    finally:
        server.close()
        await server.wait_closed()
    assert ("no-banner", "no SSH banner within 1.5 s") == (e.value.kind, str(e.value))


async def test_unanswered_tries_count_as_attempts_when_the_booter_says_so() -> None:
    """Through a port-forward each try is an attempt (medius's 30 x 10 s); without that, a
    refused port would be retried until the deadline (here 600 s)."""
    tries = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal tries
        tries += 1
        writer.close()  # like a refused port-forward: accepted, then closed

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    check = SshCheck(timeout=600, attempts=3, pause=0.1, banner_timeout=0.5, count_unanswered=True)
    try:
        with pytest.raises(CheckFailedError) as e:
            await asyncio.wait_for(
                check_login(FakeGuest(port), make_credentials("root"), check), 30
            )
    finally:
        server.close()
        await server.wait_closed()
    assert ("no-banner", "no SSH banner after 3 attempts") == (e.value.kind, str(e.value))
    assert 3 == tries


async def test_locally_unanswered_tries_do_not_use_up_the_login_attempts() -> None:
    """A local guest is still booting while its port stays silent: only the deadline ends that
    wait, however few login attempts are allowed."""
    tries = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal tries
        tries += 1
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    check = SshCheck(timeout=1.5, attempts=2, pause=0.1, banner_timeout=0.3)
    try:
        with pytest.raises(CheckFailedError) as e:
            await check_login(FakeGuest(port), make_credentials("root"), check)
    finally:
        server.close()
        await server.wait_closed()
    assert ("no-banner", "no SSH banner within 1.5 s") == (e.value.kind, str(e.value))
    assert tries > 2


async def test_a_guest_that_died_ends_the_wait_at_once() -> None:
    guest = FakeGuest(1, dead="qemu exited with status 1: could not open disk")
    with pytest.raises(CheckFailedError) as e:
        await check_login(guest, make_credentials("root"), SshCheck(timeout=600))
    assert "did not boot: qemu exited with status 1: could not open disk" == str(e.value)


@pytest.mark.parametrize(
    ("said", "is_banner"),
    [
        (b"SSH-2.0-dropbear_2022.83\r\n", True),
        (b"welcome to the guest\r\nSSH-2.0-OpenSSH_9.2\r\n", True),  # RFC 4253 4.2
        (b"SSH-1.99-OpenSSH_3.9\r\n", True),  # speaks 2.0 too (RFC 4253 5.1)
        (b"SSH-1.5-ancient\r\n", False),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", False),
    ],
)
async def test_only_an_ssh_2_identification_is_a_banner(said: bytes, is_banner: bool) -> None:
    """The wait ends on an SSH-2 server's identification line, not on any text (a web server
    forwarded to the port, an SSH-1 server) that the port happens to answer with."""

    async def speak(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(said)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(speak, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert is_banner == await _banner("127.0.0.1", port, 2.0)
    finally:
        server.close()
        await server.wait_closed()
