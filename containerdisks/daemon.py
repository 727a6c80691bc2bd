"""`serve`: the daemon's wiring — engine, scheduler, HTTP server, signals — and `serve --once`.

One job: put the parts together for one process and turn what happened into an exit status.
The scheduler and the server never meet except here, through the `Status` and `Metrics`
objects this module creates and hands to both.

Decisions:
- `serve` listens before the first pass, so `/healthz` answers while it runs and `/readyz` says
  503 until it completes; the daemon writes the results file into its work dir (a relative
  `results_file` is taken relative to `work_dir`: a pod's root filesystem is read-only).
- Signals: the first SIGTERM/SIGINT drains (the scheduler's shutdown) and the process exits 0;
  a second one ends the process at once (`os._exit`, status 128 + signal), as an impatient
  operator or the kubelet's SIGKILL would.
- `serve --once` is a one-shot run like `images push`: no HTTP server, the plan on stdout, the
  results file where `--results-file` says, exit 1 when an entry failed (0 with `--no-fail`),
  and a signal cancels it at once (130/143, by the command line's own handler).
- Leftover spool files of a killed predecessor (`*.spool` in the work dir) are removed at start.
- The work dir is checked (or created 0700) before anything else when the run publishes: one
  owned by another user or writable by group/others ends the command (exit 2, workdir.py).
- A results file that cannot be written makes the run exit 1 (the daemon logs it and goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import structlog

from containerdisks import log as logging_setup
from containerdisks import retry
from containerdisks.engine.core import Engine
from containerdisks.engine.report import render_plans
from containerdisks.engine.scheduler import Scheduler, Timing
from containerdisks.metrics import Metrics
from containerdisks.server import serving
from containerdisks.settings import ConfigError, Settings, parse_listen
from containerdisks.status import Status
from containerdisks.upstream import Mirrors
from containerdisks.workdir import own_work_dir

__all__ = ["serve"]

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


def _engine(settings: Settings, config: dict[str, Any], name: str, metrics: Metrics) -> Engine:
    return Engine(
        settings,
        config,
        name,
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


def _remove_stale_files(work_dir: Path) -> None:
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


async def serve(
    settings: Settings, config: dict[str, Any], config_name: str, out: TextIO | None = None
) -> int:
    if settings.once:
        return await _once(settings, config, config_name, out or sys.stdout)
    return await _daemon(settings, config, config_name)


async def images_push(
    settings: Settings, config: dict[str, Any], config_name: str, out: TextIO | None = None
) -> int:
    """`images push`: the same single pass as `serve --once` (one code path, as regsync's
    `once`), except that the work dir may be shared with other runs, so nothing in it is
    removed at start."""
    return await _once(settings, config, config_name, out or sys.stdout, owns_work_dir=False)


async def _once(
    settings: Settings,
    config: dict[str, Any],
    config_name: str,
    out: TextIO,
    *,
    owns_work_dir: bool = True,
) -> int:
    if not settings.dry_run:
        own_work_dir(settings.work_dir)
    metrics = Metrics()
    status = Status(heartbeat_timeout=settings.heartbeat_timeout, dry_run=settings.dry_run)
    if not settings.dry_run and owns_work_dir:
        _remove_stale_files(settings.work_dir)
    async with _metering(metrics), _engine(settings, config, config_name, metrics) as engine:
        results = None if settings.dry_run else settings.results_file
        scheduler = _scheduler(settings, engine, status, metrics, results)
        outcomes = await scheduler.run_once()
    render_plans([o.plan for o in outcomes], out, settings.output)
    failed = [o.key for o in outcomes if o.error]
    if failed:
        log.warning("entries_failed", count=len(failed), entries=failed)
    if scheduler.results_error:  # not an entry's failure: --no-fail does not cover it
        return 1
    return 0 if settings.no_fail or not failed else 1


def _results_path(settings: Settings) -> Path | None:
    if settings.dry_run:
        return None
    path = settings.results_file
    return path if path.is_absolute() else settings.work_dir / path


async def _daemon(settings: Settings, config: dict[str, Any], config_name: str) -> int:
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
        _remove_stale_files(settings.work_dir)

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
            async with (
                _metering(metrics),
                _engine(settings, config, config_name, metrics) as engine,
            ):
                scheduler = _scheduler(settings, engine, status, metrics, results)
                await scheduler.run(stop)
    finally:
        await server.__aexit__(None, None, None)
    log.info("stopped")
    return 0
