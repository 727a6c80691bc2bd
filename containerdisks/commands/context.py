"""What every command runs over: settings, the catalog loaded once, the output, the workers.

One job: the `Context` a command's `run(ctx)` gets, and the decisions every command shares —
how entries run in parallel (`run_entries`) and which exit status a run ends with (`EXIT_*`,
`exit_status`).

Decisions:
- The catalog is loaded on first use and then kept: a command that fails earlier (a results
  file that cannot be read, a work dir refused) reports that, as it always has, and no command
  loads the catalog twice.
- Entries run in parallel under one runner: at most `workers` at once, results in the order of
  the entries, and a cancellation (a signal) cancels every one still running, each through its
  own cleanup, before it propagates. A command's work function turns an entry's own failure
  into a value, so one entry never stops the others.
- Exit statuses (docs/cli.md): 0 all good (also with failed entries under `--no-fail`); 1 an
  entry failed, or the run itself did (a results file not written: `--no-fail` does not cover
  it); 2 usage or configuration error; 3 a dry run with `--exit-code` that would publish
  something (not 2, which CI must be able to tell from a usage error; a failure wins: 1);
  130 / 143 when SIGINT / SIGTERM ended the run.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

from containerdisks.catalog import Catalog, Focus, load_catalog
from containerdisks.settings import ConfigError, Settings

if TYPE_CHECKING:
    from containerdisks.signing import PublicKey

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "Context",
    "exit_status",
    "load_public_key",
    "run_entries",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

T = TypeVar("T")
R = TypeVar("R")


def exit_status(failed: bool, *, no_fail: bool = False, broken: bool = False) -> int:
    """`failed`: an entry failed (`no_fail` forgives it); `broken`: the run itself failed."""
    if broken or (failed and not no_fail):
        return EXIT_FAILED
    return EXIT_OK


async def run_entries(
    entries: Sequence[T], work: Callable[[T], Awaitable[R]], *, workers: int
) -> list[R]:
    """`work` on every entry, at most `workers` at once; the results in the entries' order."""
    done: list[R | None] = [None] * len(entries)
    gate = asyncio.Semaphore(workers)

    async def one(i: int, entry: T) -> None:
        async with gate:
            done[i] = await work(entry)

    async with asyncio.TaskGroup() as group:
        for i, entry in enumerate(entries):
            group.create_task(one(i, entry))
    return cast(list[R], done)  # every slot is filled once the group is done


@dataclass
class Context:
    """One run of one command: its settings, the config the catalog comes from, its output."""

    settings: Settings
    config: dict[str, Any]
    config_name: str
    out: TextIO
    #: The command's positional arguments (`results merge`'s files); none for most commands.
    operands: tuple[str, ...] = ()
    _catalog: Catalog | None = field(default=None, init=False, repr=False)

    @property
    def catalog(self) -> Catalog:
        """The catalog in effect, loaded on first use (a bad one is a `ConfigError`)."""
        if self._catalog is None:
            self._catalog = load_catalog(
                self.config,
                config_name=self.config_name,
                signatures=self.settings.upstream_signatures,
            )
        return self._catalog

    @functools.cached_property
    def focus(self) -> Focus:
        """`--focus` (a malformed one is a `ConfigError`)."""
        return Focus(self.settings.focus)

    @property
    def output(self) -> str:
        """`table` or `json` (`--output`)."""
        return self.settings.output

    async def each(self, entries: Sequence[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
        """`run_entries` with this run's `--workers`."""
        return await run_entries(entries, work, workers=self.settings.workers)

    def exit_status(self, failed: bool, *, broken: bool = False) -> int:
        """The status of a run whose entries `failed` (or not), under this run's `--no-fail`."""
        return exit_status(failed, no_fail=self.settings.no_fail, broken=broken)


def load_public_key(path: Path | None) -> PublicKey | None:
    """The `verify_key` setting's key, or None; an unusable key is a usage error (exit 2)."""
    if path is None:
        return None
    from containerdisks.signing import PublicKey, SigningError  # noqa: PLC0415 - cryptography

    try:
        return PublicKey.load(path)
    except SigningError as e:
        raise ConfigError(str(e)) from None
