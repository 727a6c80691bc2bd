"""The one start/stop of the tests' loopback HTTP servers: an aiohttp app on 127.0.0.1.

One job: serve the app a subclass builds (`_app`) on a loopback port and stop it within a
bound, either in the test's own event loop (`async with server:`) or in a daemon thread running
an event loop of its own (`with server:`), for tests that start the command line as a
subprocess. The fakes (Quay, Kubernetes, the echo registry), the upstream server, the fault
proxy and the token server are each only their app and what they record.

Decisions:
- The socket is bound before the site starts (port 0: the kernel picks a free one), so `port`
  is known as soon as `start` returns and there is no window where another process takes it.
- Starting in a thread waits at most `start_timeout`; stopping waits at most `stop_timeout` for
  the app's cleanup, then stops the loop and joins the thread whatever happened, so a wedged
  handler cannot hang the test session. A failed start leaves no thread behind.
- Subclasses extend `stop` (call `super().stop()`) for what they must close around the runner:
  held requests, live VMs, a client session.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["LoopbackServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (connection-refused tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LoopbackServer:
    """Base of a loopback server; a subclass builds its app in `_app`."""

    #: The thread's name, for a readable `threading.enumerate()` when a test hangs.
    name = "loopback-server"
    start_timeout = 30.0
    stop_timeout = 30.0
    #: How long aiohttp's cleanup waits for open connections (its own default: 60 s).
    shutdown_timeout = 60.0

    def __init__(
        self,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.bind = bind
        self._port = port
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _app(self) -> web.Application:
        """The app to serve; runs in the server's loop, before the socket is bound."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        """The bound port (0 before `start`)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop of the thread a `with` block started (None in the test's own loop)."""
        return self._loop

    # -- in the caller's event loop -------------------------------------------------------------

    async def start(self) -> None:
        runner = web.AppRunner(
            await self._app(), access_log=None, shutdown_timeout=self.shutdown_timeout
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.bind, self._port))
            await web.SockSite(runner, sock, ssl_context=self.ssl_context).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = sock.getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- in a thread of its own -----------------------------------------------------------------

    def __enter__(self) -> Self:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(self.start_timeout)
        except BaseException:
            self._end_thread()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end_thread()

    def _end_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(self.stop_timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=self.stop_timeout)
            loop.close()
            self._loop = self._thread = None
