"""Cleanup that a cancellation cannot cut short: one helper for every boot's teardown.

A SIGINT/SIGTERM cancels the task doing a cleanup (deleting a VM, removing a boot directory,
copying a file that the cleanup would otherwise miss). `to_the_end` lets the work finish in its
own task and only then lets the cancellation through, also when a second signal arrives while
it waits; the work's own error is not raised over the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["to_the_end"]

T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Await `work` to its end; a cancellation meanwhile waits for it, then propagates."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
