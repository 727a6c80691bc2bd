"""The daemon's Prometheus metrics, and the HTTP meter that feeds the per-host ones.

One job: own every `containerdisks_*` metric in a registry of its own (built per daemon, never
prometheus-client's global one, so tests and several daemons in one process do not collide) and
give the scheduler a few verbs to update them.

Decisions:
- HTTP traffic is measured where it happens, with aiohttp's own tracing signals (`TraceConfig`)
  attached to the engine's sessions: every request sent (redirect hops and token requests
  included), every body chunk sent, and the bytes of every upstream response as they arrive
  (read from the response's stream counter when polled, because aiohttp signals received chunks
  only for fully read bodies, not for streamed downloads). The engine needs no metrics code.
- Retries are counted from the typed `containerdisks.retry.RetryEvent` the retry loop hands its
  observers (upstream and registry retries by host, restreamed layers on their own), not from
  log lines: renaming a log event cannot stop the count, and the log level does not matter.
- The same meter lists the transfers in flight, which the console uses for progress bars.
- What the shipped alerts (`config/deploy/monitoring/`) need is exported as such: the pass
  interval and the start time (so "no pass for 3 intervals" needs no constant), readiness as a
  gauge read from the status at scrape time, and per entry and arch since when upstream offers
  something newer than what is published (absent when it does not). Request errors are counted
  apart from retries: a connection that failed, or an answer 429 or 5xx.
- The rendered text passes through `containerdisks.oci.redact.redact`: no label value shows a
  secret we hold.
- A one-shot pass (`images push`, `serve --once`) serves no `/metrics`: its `Metrics(exported=
  False)` keeps the same verbs and the HTTP meter (the console's progress) but its metrics are
  stand-ins that record nothing, and prometheus-client (with the `http.server`, `email` and
  `html` it loads) is not imported at all: ~30 ms of every no-change pass.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, cast

import aiohttp
import yarl

from containerdisks import __version__
from containerdisks.oci.redact import redact
from containerdisks.retry import RetryEvent

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

__all__ = ["RESULTS", "HttpMeter", "Metrics", "Transfer", "content_type"]

#: The last result of an entry's sync.
RESULTS = ["up-to-date", "published", "pending", "failed"]
Kind = Literal["upstream", "registry"]

_LINGER = 5.0
_SYNC_BUCKETS = (0.05, 0.25, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200)
_PASS_BUCKETS = (0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200)


def host_of(url: yarl.URL | str) -> str:
    """`host[:port]` of a URL, the port only when the URL names one."""
    u = url if isinstance(url, yarl.URL) else yarl.URL(url)
    host = u.host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{u.explicit_port}" if u.explicit_port else host


@dataclass
class Transfer:
    """One body on the wire: an image download or a blob upload."""

    label: str
    direction: Literal["down", "up"]
    host: str
    done: int = 0
    total: int | None = None
    started: float = 0.0
    closed: float | None = None  # when the body had fully arrived (downloads)


class HttpMeter:
    """Counts requests and bytes by host for one kind of peer, from aiohttp's tracing signals."""

    def __init__(self, metrics: Metrics, kind: Kind) -> None:
        self.metrics = metrics
        self.kind = kind
        self.sent: Tally[str] = Tally()
        self.received: Tally[str] = Tally()
        self._uploads: dict[int, Transfer] = {}
        self._downloads: dict[int, tuple[Transfer, aiohttp.ClientResponse]] = {}

    def trace_config(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._on_start)
        config.on_request_chunk_sent.append(self._on_chunk_sent)
        config.on_request_end.append(self._on_end)
        config.on_request_exception.append(self._on_exception)
        return config

    # -- signals -------------------------------------------------------------------------------

    async def _on_start(
        self, _s: aiohttp.ClientSession, ctx: SimpleNamespace, p: aiohttp.TraceRequestStartParams
    ) -> None:
        self.metrics.http_requests.labels(self.kind, host_of(p.url)).inc()

    async def _on_chunk_sent(
        self,
        _s: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        p: aiohttp.TraceRequestChunkSentParams,
    ) -> None:
        host = host_of(p.url)
        self.sent[host] += len(p.chunk)
        upload = self._uploads.get(id(ctx))
        if upload is None and "/blobs/uploads/" in p.url.path:
            repo = p.url.path.removeprefix("/v2/").split("/blobs/uploads/")[0]
            upload = Transfer(f"push {repo}", "up", host, started=time.monotonic())
            self._uploads[id(ctx)] = upload
        if upload is not None:
            upload.done += len(p.chunk)

    async def _on_end(
        self, _s: aiohttp.ClientSession, ctx: SimpleNamespace, p: aiohttp.TraceRequestEndParams
    ) -> None:
        self._uploads.pop(id(ctx), None)
        if p.response.status == 429 or p.response.status >= 500:
            self.metrics.http_errors.labels(self.kind, host_of(p.url)).inc()
        if self.kind == "upstream" and p.method == "GET" and p.response.status == 200:
            name = p.url.path.rsplit("/", 1)[-1] or p.url.path
            transfer = Transfer(
                f"fetch {name}",
                "down",
                host_of(p.url),
                total=p.response.content_length,
                started=time.monotonic(),
            )
            self._downloads[id(p.response)] = (transfer, p.response)

    async def _on_exception(
        self,
        _s: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        p: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        self._uploads.pop(id(ctx), None)
        self.metrics.http_errors.labels(self.kind, host_of(p.url)).inc()

    # -- polling -------------------------------------------------------------------------------

    def poll(self) -> None:
        """Account the bytes that arrived since the last poll; forget finished downloads.

        aiohttp marks a response closed once its body has fully *arrived*; the download stays
        listed (for the progress bars) until its reader has consumed it, or for at most
        `_LINGER` seconds after that, in case the reader gave up early.
        """
        now = time.monotonic()
        for key, (transfer, response) in list(self._downloads.items()):
            total = response.content.total_bytes
            self.received[transfer.host] += total - transfer.done
            transfer.done = total
            if response.closed:
                if transfer.closed is None:
                    transfer.closed = now
                if response.content.at_eof() or now - transfer.closed > _LINGER:
                    del self._downloads[key]

    def transfers(self) -> list[Transfer]:
        """Bodies on the wire now (downloads as of the last poll)."""
        return [t for t, _ in self._downloads.values()] + list(self._uploads.values())


def content_type() -> str:
    """The `Content-Type` of `Metrics.render`'s text."""
    from prometheus_client import CONTENT_TYPE_LATEST  # noqa: PLC0415 - see the docstring

    return CONTENT_TYPE_LATEST


class _Unexported:
    """A metric of a `Metrics(exported=False)`: every verb accepted, nothing recorded."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        pass

    def labels(self, *_values: str) -> _Unexported:
        return self

    def _ignore(self, *_args: object, **_kwargs: object) -> None:
        pass

    inc = dec = set = observe = state = info = set_function = remove = _ignore


class _BytesCollector:
    """Bytes downloaded from upstream and pushed to registries, polled at scrape time."""

    def __init__(self, upstream: HttpMeter, registry: HttpMeter) -> None:
        self.upstream = upstream
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415

        self.upstream.poll()
        down = CounterMetricFamily(
            "containerdisks_downloaded_bytes",
            "Bytes received from upstream hosts (metadata and images), by host contacted.",
            labels=["host"],
        )
        for host, n in sorted(self.upstream.received.items()):
            down.add_metric([host], n)
        up = CounterMetricFamily(
            "containerdisks_pushed_bytes",
            "Request body bytes sent to registries (blobs and manifests), by registry.",
            labels=["registry"],
        )
        for host, n in sorted(self.registry.sent.items()):
            up.add_metric([host], n)
        yield down
        yield up


class Metrics:
    """Every metric of one daemon, in a registry of its own (`exported=False`: none, see the
    docstring)."""

    def __init__(self, *, exported: bool = True) -> None:
        self.exported = exported
        r: Any = None
        kinds: tuple[Any, ...] = (_Unexported,) * 5
        if exported:
            import prometheus_client as pc  # noqa: PLC0415 - see the docstring

            r = self.registry = pc.CollectorRegistry()
            kinds = (pc.Counter, pc.Enum, pc.Gauge, pc.Histogram, pc.Info)
        Counter, Enum, Gauge, Histogram, Info = kinds  # noqa: N806
        Info("containerdisks_build", "Version of containerdisks.", registry=r).info(
            {"version": __version__}
        )
        self.passes = Counter(
            "containerdisks_passes", "Passes completed over the catalog.", registry=r
        )
        self.pass_duration = Histogram(
            "containerdisks_pass_duration_seconds",
            "Wall time of a pass, from discovery to the last entry synced.",
            buckets=_PASS_BUCKETS,
            registry=r,
        )
        self.last_pass = Gauge(
            "containerdisks_last_pass_timestamp_seconds",
            "When the last pass completed (Unix time).",
            registry=r,
        )
        self.discovery_failures = Counter(
            "containerdisks_discovery_failures",
            "Catalog items whose upstream metadata could not be read in a pass.",
            registry=r,
        )
        self.syncs = Counter(
            "containerdisks_syncs", "Entry syncs finished, by result.", ["result"], registry=r
        )
        self.sync_duration = Histogram(
            "containerdisks_sync_duration_seconds",
            "Wall time of one entry's sync (plan and publish), by result.",
            ["result"],
            buckets=_SYNC_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "containerdisks_entry_last_success_timestamp_seconds",
            "When the entry last synced without error (Unix time).",
            ["entry"],
            registry=r,
        )
        self.last_result = Enum(
            "containerdisks_entry_last_result",
            "The result of the entry's last sync.",
            ["entry"],
            states=RESULTS,
            registry=r,
        )
        self.failures = Gauge(
            "containerdisks_entry_consecutive_failures",
            "Syncs of the entry that failed in a row (0 after a success).",
            ["entry"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "containerdisks_queue_depth", "Entries waiting for a worker.", registry=r
        )
        self.in_flight = Gauge(
            "containerdisks_syncs_in_flight", "Entry syncs running now.", registry=r
        )
        self.http_requests = Counter(
            "containerdisks_http_requests",
            "HTTP requests sent, by kind of peer (upstream, registry) and host contacted.",
            ["kind", "host"],
            registry=r,
        )
        self.http_retries = Counter(
            "containerdisks_http_retries",
            "Requests retried after a transient failure, by kind of peer and host.",
            ["kind", "host"],
            registry=r,
        )
        self.http_errors = Counter(
            "containerdisks_http_errors",
            "HTTP requests that failed to connect or were answered 429 or 5xx, by kind and host.",
            ["kind", "host"],
            registry=r,
        )
        self.arch_outcomes = Counter(
            "containerdisks_arch_outcomes",
            "Arches synced, by outcome (published, reused, up-to-date, failed; in a dry run the "
            "planned action).",
            ["outcome"],
            registry=r,
        )
        self.upstream_newer = Gauge(
            "containerdisks_upstream_newer_since_timestamp_seconds",
            "Since when upstream offers an arch of the entry newer than the one published "
            "(Unix time); absent while they agree.",
            ["entry", "arch"],
            registry=r,
        )
        self._newer: set[tuple[str, str]] = set()
        self.interval = Gauge(
            "containerdisks_pass_interval_seconds",
            "Seconds between the starts of two passes (0: one pass only).",
            registry=r,
        )
        self.started = Gauge(
            "containerdisks_start_timestamp_seconds",
            "When the daemon started (Unix time).",
            registry=r,
        )
        self.started.set(time.time())
        self.ready = Gauge(
            "containerdisks_ready",
            "1 while the daemon is ready (/readyz answers 200), else 0.",
            registry=r,
        )
        self.restreams = Counter(
            "containerdisks_layer_restreams",
            "Arch builds streamed again from upstream after a transient failure mid-stream.",
            registry=r,
        )
        self.leader = Gauge(
            "containerdisks_leader",
            "1 while this replica holds a Lease (`--leader-elect`, `--shards`) and may publish.",
            registry=r,
        )
        self.shard_held = Gauge(
            "containerdisks_shard_held",
            "1 for each shard whose Lease this replica holds (`--shards`; shard 0 with "
            "`--leader-elect` alone).",
            ["shard"],
            registry=r,
        )
        self.upstream = HttpMeter(self, "upstream")
        self.registry_meter = HttpMeter(self, "registry")
        if exported:
            r.register(cast("Collector", _BytesCollector(self.upstream, self.registry_meter)))

    # -- verbs for the scheduler ----------------------------------------------------------------

    def sync_finished(
        self, entry: str, result: str, seconds: float, when: float, failures: int
    ) -> None:
        self.syncs.labels(result).inc()
        self.sync_duration.labels(result).observe(seconds)
        self.last_result.labels(entry).state(result)
        self.failures.labels(entry).set(failures)
        if result != "failed":
            self.last_success.labels(entry).set(when)

    def arches_synced(self, entry: str, arches: dict[str, tuple[str, float | None]]) -> None:
        """Each arch of a sync: its outcome, and since when upstream is newer (None: it is
        not)."""
        for arch, (outcome, newer_since) in arches.items():
            self.arch_outcomes.labels(outcome).inc()
            if newer_since is not None:
                self.upstream_newer.labels(entry, arch).set(newer_since)
                self._newer.add((entry, arch))
            elif (entry, arch) in self._newer:
                self._newer.discard((entry, arch))
                self.upstream_newer.remove(entry, arch)

    def forget(self, entry: str) -> None:
        """Drop an entry's series (it is no longer in the catalog upstream)."""
        for metric in (self.last_success, self.last_result, self.failures):
            with contextlib.suppress(KeyError):
                metric.remove(entry)
        for key in sorted(k for k in self._newer if k[0] == entry):
            self._newer.discard(key)
            self.upstream_newer.remove(*key)

    def pass_finished(self, seconds: float, when: float) -> None:
        self.passes.inc()
        self.pass_duration.observe(seconds)
        self.last_pass.set(when)

    def leases(self, held: list[int], count: int, *, leader: bool) -> None:
        """The shards whose Leases this replica holds now, of `count`."""
        self.leader.set(1 if leader else 0)
        for shard in range(count):
            self.shard_held.labels(str(shard)).set(1 if shard in held else 0)

    def render(self) -> bytes:
        """The exposition text; a registered secret in a label value is masked (labels hold
        hosts and entry names, never a credential; this is the boundary that makes sure)."""
        from prometheus_client import generate_latest  # noqa: PLC0415 - see the docstring

        return redact(generate_latest(self.registry).decode("utf-8")).encode("utf-8")

    # -- retries, from the retry loop's events ---------------------------------------------------

    def retry_observer(
        self, rewrite: Callable[[str], str] = lambda url: url
    ) -> Callable[[RetryEvent], None]:
        """An observer for `containerdisks.retry.observing` counting retries; `rewrite` maps
        a canonical upstream URL to the one contacted (the mirror table), so retries and
        requests name the same host."""

        def observe(event: RetryEvent) -> None:
            if event.kind == "upstream" and event.address:
                self.http_retries.labels("upstream", host_of(rewrite(event.address))).inc()
            elif event.kind == "registry" and event.address:
                self.http_retries.labels("registry", event.address).inc()
            elif event.kind == "restream":
                self.restreams.inc()

        return observe
