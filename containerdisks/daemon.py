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
- Progress: on a terminal, bars redrawn twice a second; otherwise (JSON logs, a pod, CI) a
  `progress` event per transfer every `progress_interval` seconds (bytes, total, rate, ETA), the
  first one `progress_interval` after the transfer started, so short transfers log none.
- With `leader_elect` or `shards`, the Leases (election.py) run beside the scheduler as their
  own task: the engine discovers and the scheduler starts only what a held shard covers (shard
  of an item: engine/shards.py over the whole catalog, so every replica computes the same
  map); gaining a shard starts a pass at once. After the drain, every Lease is released so a
  successor starts on its next round. The Kubernetes client is imported only then.
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
from typing import TYPE_CHECKING

import structlog

from containerdisks import log as logging_setup
from containerdisks import retry
from containerdisks.catalog import Catalog
from containerdisks.engine.core import Engine, Outcome
from containerdisks.engine.plan import EntryPlan
from containerdisks.engine.scheduler import Scheduler, Timing
from containerdisks.engine.shards import assign, catalog_weights
from containerdisks.metrics import Metrics, Transfer
from containerdisks.settings import ConfigError, Settings, parse_listen
from containerdisks.status import Status
from containerdisks.upstream import Mirrors
from containerdisks.workdir import own_work_dir

if TYPE_CHECKING:
    from containerdisks.election import Elector

__all__ = ["one_pass", "remove_stale_files", "serve"]

log = structlog.get_logger(__name__)

_PROGRESS_PERIOD = 0.5
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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


class _LeaseGate:
    """The scheduler's `Gate` over the Leases: an item is held when its shard is."""

    def __init__(self, elector: Elector, shard_of: dict[str, int]) -> None:
        self.elector = elector
        self.shard_of = shard_of

    def active(self) -> bool:
        return self.elector.active()

    def holds(self, label: str) -> bool:
        shard = self.shard_of.get(label)
        return shard is not None and self.elector.holds(shard)


def _shard_map(catalog: Catalog, count: int) -> dict[str, int]:
    parts = assign(catalog_weights(b.item for b in catalog.items).items(), count)
    return {label: i for i, labels in enumerate(parts) for label in labels}


def _lease_namespace(settings: Settings) -> str:
    if settings.lease_namespace:
        return settings.lease_namespace
    try:
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


async def _run_elected(
    settings: Settings,
    *,
    engine: Engine,
    scheduler: Scheduler,
    status: Status,
    metrics: Metrics,
    stop: asyncio.Event,
) -> None:
    """The scheduler under Leases: the Leases' loop beside it, released after its drain."""
    from containerdisks import election  # noqa: PLC0415 - only a replica needs the client

    namespace = _lease_namespace(settings)
    timing = election.LeaseTiming(
        settings.lease_duration, settings.lease_renew_deadline, settings.lease_retry_period
    )
    try:
        api_context = election.kube_api(
            settings.kubeconfig, namespace, settings.lease_name, settings.lease_retry_period
        )
        api = await api_context.__aenter__()
    except Exception as e:  # kubernetes-asyncio's ConfigException and file errors
        raise ConfigError(f"Kubernetes API for the Leases: {type(e).__name__}: {e}") from None
    try:
        elector = election.Elector(
            api,
            name=settings.lease_name,
            identity=election.default_identity(),
            shards=settings.shards,
            timing=timing,
            status=status,
            metrics=metrics,
            on_gain=scheduler.request_pass,
        )
        gate = _LeaseGate(elector, _shard_map(engine.catalog, elector.count))
        engine.holds = gate.holds
        scheduler.gate = gate
        log.info(
            "leases_started",
            namespace=namespace,
            lease=settings.lease_name,
            identity=elector.identity,
            shards=settings.shards,
        )
        leases_stop = asyncio.Event()
        leases = asyncio.create_task(elector.run(leases_stop))
        try:
            await scheduler.run(stop)
        finally:
            leases_stop.set()
            await leases
            await elector.release()
    finally:
        await api_context.__aexit__(None, None, None)


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
async def _metering(metrics: Metrics, progress_interval: float) -> AsyncIterator[None]:
    """Poll transfer meters (and draw progress bars on a console) while the body runs."""
    meter = asyncio.create_task(_meter(metrics, progress_interval))
    try:
        yield
    finally:
        meter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await meter
        console = logging_setup.console()
        if console is not None:
            console.bars([])


async def _meter(metrics: Metrics, progress_interval: float) -> None:
    """Account streamed downloads; draw progress bars when logging to a terminal, else log a
    `progress` event per transfer every `progress_interval` seconds."""
    console = logging_setup.console()
    logged: dict[int, float] = {}  # id(transfer) -> when its last progress event was due
    period = _PROGRESS_PERIOD if console is not None else min(_PROGRESS_PERIOD, progress_interval)
    while True:
        metrics.upstream.poll()
        now = time.monotonic()
        transfers = metrics.upstream.transfers() + metrics.registry_meter.transfers()
        if console is not None:
            columns = console.columns()
            console.bars(
                [
                    logging_setup.format_bar(
                        t.label, t.done, t.total, now - t.started, columns=columns
                    )
                    for t in transfers
                ]
            )
        else:
            logged = {id(t): logged.get(id(t), t.started) for t in transfers}
            for t in transfers:
                if now - logged[id(t)] >= progress_interval:
                    logged[id(t)] = now
                    _log_progress(t, now)
        await asyncio.sleep(period)


def _log_progress(t: Transfer, now: float) -> None:
    seconds = now - t.started
    rate = t.done / seconds if seconds > 0 else 0.0
    eta = round((t.total - t.done) / rate, 1) if t.total and rate else None
    log.info(
        "progress",
        transfer=t.label,
        host=t.host,
        bytes=t.done,
        total=t.total,
        rate=round(rate),
        eta=eta,
        seconds=round(seconds, 1),
    )


async def one_pass(
    settings: Settings,
    catalog: Callable[[], Catalog],
    *,
    planned: Callable[[EntryPlan], None] | None = None,
) -> tuple[list[Outcome], bool]:
    """One pass through the scheduler, as `images push` and `serve --once` run it: the
    outcomes, and whether the results file could not be written. The caller checked the work
    dir; `catalog` is called when the engine starts; `planned` is told each entry's plan before
    the entry is published (the engine's hook). Nothing serves `/metrics` here."""
    metrics = Metrics(exported=False)
    status = Status(heartbeat_timeout=settings.heartbeat_timeout, dry_run=settings.dry_run)
    metering = _metering(metrics, settings.progress_interval)
    async with metering, _engine(settings, catalog(), metrics) as engine:
        if planned is not None:
            engine.planned = planned
        results = None if settings.dry_run else settings.results_file
        scheduler = _scheduler(settings, engine, status, metrics, results)
        outcomes = await scheduler.run_once()
    return outcomes, bool(scheduler.results_error)


def _results_path(settings: Settings) -> Path | None:
    if settings.dry_run:
        return None
    path = settings.results_file
    return path if path.is_absolute() else settings.work_dir / path


def _prepared_results(settings: Settings) -> Path | None:
    """The results file's path, its directory made (0700) and the work dir's stale files gone."""
    results = _results_path(settings)
    if results is not None:
        own_work_dir(settings.work_dir)
        try:
            results.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"results file {results}: {e.strerror or e}") from None
        remove_stale_files(settings.work_dir)
    return results


async def serve(settings: Settings, catalog: Callable[[], Catalog]) -> int:
    """The daemon until a signal: `catalog` is called when the engine starts, after the
    server listens."""
    host, port = parse_listen(settings.listen)
    metrics = Metrics()
    status = Status(
        heartbeat_timeout=settings.heartbeat_timeout,
        dry_run=settings.dry_run,
        interval=settings.interval,
    )
    metrics.interval.set(settings.interval)
    metrics.ready.set_function(lambda: 1.0 if status.is_ready() else 0.0)
    count_retries = metrics.retry_observer(Mirrors(settings.upstream_mirrors).rewrite)
    results = _prepared_results(settings)
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
            metering = _metering(metrics, settings.progress_interval)
            async with metering, _engine(settings, catalog(), metrics) as engine:
                scheduler = _scheduler(settings, engine, status, metrics, results)
                schedulers.append(scheduler)
                if settings.elects:
                    await _run_elected(
                        settings,
                        engine=engine,
                        scheduler=scheduler,
                        status=status,
                        metrics=metrics,
                        stop=stop,
                    )
                else:
                    await scheduler.run(stop)
    finally:
        await server.__aexit__(None, None, None)
    log.info("stopped")
    return 0
