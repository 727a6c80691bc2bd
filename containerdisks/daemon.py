"""The wiring of `serve`: engine, scheduler, HTTP server and signals for one process.

One job: put the parts together — for the daemon (`serve`) and for the single pass that
`images push` and `serve --once` run (`one_pass`; commands/push.py prints it and decides the
exit status). The scheduler and the server never meet except here, through the `Status` and
`Metrics` objects this module creates and hands to both.

Decisions:
- `serve` listens before the first pass, so `/healthz` answers while it runs and `/readyz` says
  503 until it completes; the daemon writes the results file into its work dir (a relative
  `results_file` is taken relative to `work_dir`: a pod's root filesystem is read-only).
- Signals: the first SIGTERM/SIGINT drains (the scheduler's shutdown) and the process exits 0;
  a second one ends the process at once (`os._exit`, status 128 + signal), as an impatient
  operator or the kubelet's SIGKILL would. A single pass installs none: the command line's own
  handler cancels it at once (130/143). SIGHUP starts a pass now (`pass_requested` in the log),
  as an operator who just fixed a mirror or a registry wants, without waiting out `--interval`.
- Leftover spool files of a killed predecessor (`*.spool` in the work dir) are removed at start
  by the daemon and `serve --once` (`remove_stale_files`), never by `images push`, whose work
  dir other runs may share.
- The work dir is checked (or created 0700) before anything else when the daemon publishes: one
  owned by another user or writable by group/others ends the command (exit 2, workdir.py).
- A results file the daemon cannot write is logged and the daemon goes on; a single pass
  reports it to its caller (exit 1).
- The HTTP server (aiohttp.web) is imported by `serve` alone: a single pass never listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from containerdisks import log as logging_setup
from containerdisks import retry
from containerdisks.catalog import Catalog
from containerdisks.engine.core import Engine, Outcome
from containerdisks.engine.scheduler import Scheduler, Timing
from containerdisks.metrics import Metrics
from containerdisks.settings import ConfigError, Settings, parse_listen
from containerdisks.status import Status
from containerdisks.upstream import Mirrors
from containerdisks.workdir import own_work_dir

__all__ = ["one_pass", "remove_stale_files", "serve"]

log = structlog.get_logger(__name__)

_PROGRESS_PERIOD = 0.5


def _timing(settings: Settings) -> Timing:
    return Timing(
        interval=settings.interval,
        jitter=settings.interval_jitter,
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
        shutdown_grace=settings.shutdown_grace,
    )


def _engine(settings: Settings, catalog: Catalog, metrics: Metrics) -> Engine:
    return Engine(
        settings,
        catalog,
        upstream_traces=[metrics.upstream.trace_config()],
        registry_traces=[metrics.registry_meter.trace_config()],
    )


def _scheduler(
    settings: Settings, engine: Engine, status: Status, metrics: Metrics, results: Path | None
) -> Scheduler:
    return Scheduler(
        engine,
        status,
        metrics,
        timing=_timing(settings),
        workers=settings.workers,
        queue_size=settings.queue_size,
        dry_run=settings.dry_run,
        results_path=results,
    )


def remove_stale_files(work_dir: Path) -> None:
    """Spool files and half-written results left by a killed predecessor."""
    if not work_dir.is_dir():
        return
    removed = []
    for path in [*work_dir.glob("*.spool"), *work_dir.glob(".*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    if removed:
        log.info("removed_stale_files", work_dir=str(work_dir), files=sorted(removed))


@contextlib.asynccontextmanager
async def _metering(metrics: Metrics) -> AsyncIterator[None]:
    """Poll transfer meters (and draw progress bars on a console) while the body runs."""
    meter = asyncio.create_task(_meter(metrics))
    try:
        yield
    finally:
        meter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await meter
        console = logging_setup.console()
        if console is not None:
            console.bars([])


async def _meter(metrics: Metrics) -> None:
    """Account streamed downloads; draw progress bars when logging to a terminal."""
    console = logging_setup.console()
    while True:
        metrics.upstream.poll()
        if console is not None:
            now = time.monotonic()
            console.bars(
                [
                    logging_setup.format_bar(t.label, t.done, t.total, now - t.started)
                    for t in metrics.upstream.transfers() + metrics.registry_meter.transfers()
                ]
            )
        await asyncio.sleep(_PROGRESS_PERIOD)


async def one_pass(
    settings: Settings, catalog: Callable[[], Catalog]
) -> tuple[list[Outcome], bool]:
    """One pass through the scheduler, as `images push` and `serve --once` run it: the
    outcomes, and whether the results file could not be written. The caller checked the work
    dir; `catalog` is called when the engine starts."""
    metrics = Metrics()
    status = Status(heartbeat_timeout=settings.heartbeat_timeout, dry_run=settings.dry_run)
    async with _metering(metrics), _engine(settings, catalog(), metrics) as engine:
        results = None if settings.dry_run else settings.results_file
        scheduler = _scheduler(settings, engine, status, metrics, results)
        outcomes = await scheduler.run_once()
    return outcomes, bool(scheduler.results_error)


def _results_path(settings: Settings) -> Path | None:
    if settings.dry_run:
        return None
    path = settings.results_file
    return path if path.is_absolute() else settings.work_dir / path


async def serve(settings: Settings, catalog: Callable[[], Catalog]) -> int:
    """The daemon until a signal: `catalog` is called when the engine starts, after the
    server listens."""
    host, port = parse_listen(settings.listen)
    metrics = Metrics()
    status = Status(heartbeat_timeout=settings.heartbeat_timeout, dry_run=settings.dry_run)
    count_retries = metrics.retry_observer(Mirrors(settings.upstream_mirrors).rewrite)
    results = _results_path(settings)
    if results is not None:
        own_work_dir(settings.work_dir)
        try:
            results.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"results file {results}: {e.strerror or e}") from None
        remove_stale_files(settings.work_dir)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("shutdown_forced", signal=sig.name)
            sys.stderr.flush()
            os._exit(128 + sig)
        log.info("shutdown_requested", signal=sig.name, grace=settings.shutdown_grace)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    schedulers: list[Scheduler] = []  # the one the engine runs, once it runs

    def on_hangup() -> None:
        log.info("pass_requested", signal="SIGHUP")
        for s in schedulers:
            s.request_pass()

    loop.add_signal_handler(signal.SIGHUP, on_hangup)  # before the first pass: never fatal

    from containerdisks.server import serving  # noqa: PLC0415 - see the docstring

    try:
        server = serving(
            status,
            metrics,
            host,
            port,
            header_timeout=settings.http_header_timeout,
            max_connections=settings.http_max_connections,
        )
        addresses = await server.__aenter__()
    except OSError as e:
        raise ConfigError(f"cannot listen on {settings.listen}: {e.strerror or e}") from None
    try:
        log.info(
            "listening",
            addresses=[f"{h}:{p}" for h, p in addresses],
            dry_run=settings.dry_run,
            interval=settings.interval,
            workers=settings.workers,
        )
        with retry.observing(count_retries):
            async with _metering(metrics), _engine(settings, catalog(), metrics) as engine:
                scheduler = _scheduler(settings, engine, status, metrics, results)
                schedulers.append(scheduler)
                await scheduler.run(stop)
    finally:
        await server.__aexit__(None, None, None)
    log.info("stopped")
    return 0
