"""Helpers for discovery tests: the core's real `HttpUpstream`, pointed at an `UpstreamServer`.

One job: give a test a running loopback upstream with chosen fixture files and the client the
core would use, mirrored to it. Retries are kept (two attempts) but do not wait, so fault tests
stay fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from containerdisks.retry import RetryPolicy
from containerdisks.upstream import HttpUpstream, Mirrors
from tests.support.upstream_server import DEFAULT_FIXTURES, UpstreamServer, lay_out_upstream

__all__ = ["Serve", "mirrored_client", "serving"]


async def _no_sleep(_: float) -> None:
    return None


def mirrored_client(server: UpstreamServer, *, attempts: int = 2) -> HttpUpstream:
    """The core's HTTP layer with every host under the server's root mirrored to it."""
    return HttpUpstream(
        Mirrors(server.mirrors()),
        retry=RetryPolicy(attempts=attempts, base_delay=0.0),
        sleep=_no_sleep,
        connect_timeout=5,
        read_timeout=5,
    )


Serve = Callable[..., AbstractAsyncContextManager[tuple[UpstreamServer, HttpUpstream]]]


def serving(root: Path) -> Serve:
    """`async with serving(root)(fixtures) as (server, upstream):` serves those fixture files."""

    @asynccontextmanager
    async def run(
        fixtures: tuple[str, ...] = DEFAULT_FIXTURES,
    ) -> AsyncIterator[tuple[UpstreamServer, HttpUpstream]]:
        tree = lay_out_upstream(root, fixtures)
        async with UpstreamServer(tree) as server, mirrored_client(server) as upstream:
            yield server, upstream

    return run
