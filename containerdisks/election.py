"""Leases: which shards of the catalog this `serve` replica may work on, decided by Kubernetes.

One job: hold `coordination.k8s.io/v1` Leases for `serve --leader-elect` (one Lease, `lease_name`:
the holder is the leader and publishes, the others are ready and idle) and `serve --shards S`
(one Lease per shard, `<lease_name>-shard-<i>`, at most ⌈S/N⌉ per replica), and answer
`holds(shard)` for the scheduler. No coordinator of our own: the API server's optimistic
concurrency is the only lock.

Decisions (client-go's `tools/leaderelection`, mirrored):
- Acquire and renew are a read, then an update carrying the `resourceVersion` read: a replica
  that raced another gets 409 Conflict and is simply not the holder this round. A Lease that
  does not exist is created (409 AlreadyExists: someone else was first).
- Expiry is judged on the *observer's* monotonic clock, never on the times written in the
  Lease: a record is "seen" when its `resourceVersion` changes, and another replica may take a
  Lease only `leaseDurationSeconds` after it last saw it change. A record seen for the first
  time counts as just renewed, so a restarted replica waits a full lease before taking over
  one that was not released. Wall clocks of different machines never meet.
- The holder's side: `holds(i)` is true only until `renew_deadline` after the moment the last
  successful renew was *sent* (sent before it was written, written before any other replica
  saw it). `renew_deadline < lease_duration`, so a holder that cannot renew (the API server away,
  the process stopped by SIGSTOP and continued) stops starting work before any other replica
  may take the Lease. The check is made when work starts, on the monotonic clock, so a process
  that was frozen sees at once, on waking, that it no longer holds anything.
- Work already running when a Lease is lost is *not* cancelled: it finishes, bounded by the
  engine's own deadlines. That is safe because a publish is idempotent and converges (digests
  are reproducible; blobs, then manifests, then tags in one order): docs/scaling.md explains it.
- Durations are client-go's defaults: lease 15 s, renew deadline 10 s, retry period 2 s; one
  round (list, renew, give back, acquire) runs every retry period, with up to a fifth of it
  added at random while this replica holds less than its share, so contenders spread out.
- Shards: every replica keeps a membership Lease (`<lease_name>-member-<k>`, the lowest free
  slot, so their number stays bounded without a delete permission); N is the number of live
  members, each replica holds at most ⌈S/N⌉ shards, gives back its highest-numbered extra ones
  when N grows (a release), and takes free or expired ones (tried in an order hashed from its
  identity, so replicas rarely contend for the same one) while it holds fewer.
- A graceful shutdown releases every Lease as client-go's `ReleaseOnCancel` does: holder
  cleared, `leaseDurationSeconds: 1`, so a successor takes it on its next round.
- Every Lease carries the label `containerdisks.kubevirt.io/lease-group: <lease_name>`; one
  LIST by that label per round reads them all. API errors are one line each and only make
  this round fail: holding ends by the renew deadline, not by an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from containerdisks.metrics import Metrics
from containerdisks.status import Status

__all__ = [
    "Elector",
    "LeaseApi",
    "LeaseConflictError",
    "LeaseTiming",
    "default_identity",
    "kube_api",
]

log = structlog.get_logger(__name__)

GROUP_LABEL = "containerdisks.kubevirt.io/lease-group"
#: The most membership slots a replica looks through (a bound on a hostile or broken cluster).
MAX_MEMBERS = 1024


class LeaseConflictError(Exception):
    """409 from the API server: AlreadyExists on create, Conflict on a stale update."""


class LeaseApi(Protocol):
    """The four calls on Leases, with plain JSON dicts (`kube_api` is the real one)."""

    async def list(self) -> list[dict[str, Any]]: ...
    async def create(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LeaseTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass
class _Seen:
    """A Lease as last read, and when (our monotonic clock) its record last changed."""

    version: str
    holder: str
    duration: float
    seen: float
    body: dict[str, Any] = field(default_factory=dict)

    def free(self, now: float, me: str) -> bool:
        return not self.holder or self.holder == me or self.seen + self.duration <= now


def default_identity() -> str:
    """The pod's name (its hostname in Kubernetes) and our pid, as client-go's examples do."""
    return f"{socket.gethostname()}_{os.getpid()}"


def _micro_time(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """The Leases of one replica: `run` until stopped, then `release`."""

    def __init__(
        self,
        api: LeaseApi,
        *,
        name: str,
        identity: str,
        shards: int,
        timing: LeaseTiming,
        status: Status,
        metrics: Metrics,
        on_gain: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.api = api
        self.name = name
        self.identity = identity
        self.sharded = shards > 0
        self.count = max(1, shards)
        self.timing = timing
        self.status = status
        self.metrics = metrics
        self.on_gain = on_gain
        self.monotonic = monotonic
        self.wall = wall
        self.rand = rand
        self.held: dict[int, float] = {}  # shard -> when its last successful write was sent
        self.member: tuple[str, float] | None = None  # our membership Lease, when written
        self.members = 1
        self.seen: dict[str, _Seen] = {}
        self._publish()

    # -- what the scheduler asks ----------------------------------------------------------------

    def lease_name(self, shard: int) -> str:
        return f"{self.name}-shard-{shard}" if self.sharded else self.name

    def holds(self, shard: int) -> bool:
        sent = self.held.get(shard)
        return sent is not None and self.monotonic() - sent < self.timing.renew_deadline

    def held_shards(self) -> list[int]:
        return sorted(i for i in self.held if self.holds(i))

    def active(self) -> bool:
        return bool(self.held_shards())

    @property
    def share(self) -> int:
        return math.ceil(self.count / max(1, self.members))

    # -- the loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """A round every retry period until `stop`; a failed round is logged and waited out."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.round(), self.timing.renew_deadline)
            except (TimeoutError, OSError, LeaseConflictError, ValueError, KeyError) as e:
                log.warning("lease_round_failed", error=_one_line(e))
            except Exception as e:  # the API client's own errors: one line, next round
                log.warning("lease_round_failed", error=_one_line(e))
            wait = self.timing.retry_period
            if len(self.held_shards()) < self.share:
                wait += self.timing.retry_period * 0.2 * self.rand()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def round(self) -> None:
        """Read every Lease of the group, renew ours, give back extras, take free ones.

        `/status` and `/metrics` are told what is held after the round, even one that failed
        (the API server away): what ran out meanwhile is no longer shown as held."""
        try:
            self._expire()
            await self._read()
            if self.sharded:
                await self._membership()
            for shard in sorted(self.held):
                await self._renew(shard)
            for shard in sorted(self.held, reverse=True)[: max(0, len(self.held) - self.share)]:
                await self._release(shard, reason="rebalance")
            if len(self.held) < self.share:
                for shard in self._candidates():
                    if len(self.held) >= self.share:
                        break
                    await self._acquire(shard)
        finally:
            self._publish()

    async def release(self) -> None:
        """Give every Lease back at once (a graceful shutdown), so successors start now."""
        for shard in sorted(self.held):
            with contextlib.suppress(Exception):
                await self._release(shard, reason="shutdown")
        if self.member is not None:
            name = self.member[0]
            self.member = None
            with contextlib.suppress(Exception):
                await self._write_release(name)
        self._publish()

    # -- rounds ---------------------------------------------------------------------------------

    def _expire(self) -> None:
        for shard in sorted(self.held):
            if not self.holds(shard):
                del self.held[shard]
                log.warning(
                    "lease_lost",
                    lease=self.lease_name(shard),
                    shard=shard,
                    reason="not renewed within the renew deadline",
                )

    async def _read(self) -> None:
        now = self.monotonic()
        current: dict[str, _Seen] = {}
        for lease in await self.api.list():
            meta = lease.get("metadata") or {}
            spec = lease.get("spec") or {}
            name, version = str(meta.get("name", "")), str(meta.get("resourceVersion", ""))
            old = self.seen.get(name)
            seen = old.seen if old is not None and old.version == version else now
            current[name] = _Seen(
                version,
                str(spec.get("holderIdentity") or ""),
                float(spec.get("leaseDurationSeconds") or 0),
                seen,
                lease,
            )
        self.seen = current
        for shard in sorted(self.held):  # taken by another: we lost it (and may not know why)
            record = current.get(self.lease_name(shard))
            if record is None or record.holder != self.identity:
                del self.held[shard]
                log.warning(
                    "lease_lost",
                    lease=self.lease_name(shard),
                    shard=shard,
                    reason="held by another",
                    holder=record.holder if record else "",
                )

    async def _membership(self) -> None:
        now = self.monotonic()
        prefix = f"{self.name}-member-"
        if self.member is not None:
            record = self.seen.get(self.member[0])
            if record is None or record.holder != self.identity:
                self.member = None
        if self.member is None:
            for k in range(MAX_MEMBERS):
                name = f"{prefix}{k}"
                record = self.seen.get(name)
                free = record is None or record.free(now, self.identity)
                if free and await self._write(name, record):
                    self.member = (name, now)
                    break
        else:
            name = self.member[0]
            if await self._write(name, self.seen.get(name)):
                self.member = (name, now)
        live = [
            r
            for n, r in self.seen.items()
            if n.startswith(prefix) and r.holder and r.holder != self.identity
            and r.seen + r.duration > now
        ]  # fmt: skip
        self.members = len(live) + 1

    def _candidates(self) -> list[int]:
        now = self.monotonic()

        def free(shard: int) -> bool:
            record = self.seen.get(self.lease_name(shard))
            return record is None or record.free(now, self.identity)

        def rank(shard: int) -> bytes:
            return hashlib.sha256(f"{self.identity}/{shard}".encode()).digest()

        return sorted((s for s in range(self.count) if s not in self.held and free(s)), key=rank)

    async def _renew(self, shard: int) -> None:
        name = self.lease_name(shard)
        sent = self.monotonic()
        if await self._write(name, self.seen.get(name)):
            self.held[shard] = sent

    async def _acquire(self, shard: int) -> None:
        name = self.lease_name(shard)
        sent = self.monotonic()
        if await self._write(name, self.seen.get(name)):
            self.held[shard] = sent
            log.info("lease_acquired", lease=name, shard=shard, identity=self.identity)
            self.on_gain()

    async def _release(self, shard: int, *, reason: str) -> None:
        name = self.lease_name(shard)
        self.held.pop(shard, None)  # stop starting work before anyone may take it
        log.info("lease_released", lease=name, shard=shard, reason=reason)
        await self._write_release(name)

    # -- writes ---------------------------------------------------------------------------------

    def _spec(self, record: _Seen | None) -> dict[str, Any]:
        now = _micro_time(self.wall())
        old = (record.body.get("spec") or {}) if record is not None else {}
        mine = record is not None and record.holder == self.identity
        transitions = int(old.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
            "acquireTime": old.get("acquireTime") if mine else now,
            "renewTime": now,
            "leaseTransitions": transitions if mine or record is None else transitions + 1,
        }

    def _body(self, name: str, record: _Seen | None, spec: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {GROUP_LABEL: self.name}}
        if record is not None:
            meta["resourceVersion"] = record.version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": spec}  # fmt: skip

    async def _write(self, name: str, record: _Seen | None) -> bool:
        """Create or update `name` with us as holder; False when another replica won."""
        body = self._body(name, record, self._spec(record))
        try:
            if record is None:
                written = await self.api.create(body)
            else:
                written = await self.api.replace(name, body)
        except LeaseConflictError:
            return False
        except Exception as e:
            log.warning("lease_write_failed", lease=name, error=_one_line(e))
            return False
        meta = written.get("metadata") or {}
        self.seen[name] = _Seen(
            str(meta.get("resourceVersion", "")), self.identity, self.timing.lease_duration,
            self.monotonic(), written,
        )  # fmt: skip
        return True

    async def _write_release(self, name: str) -> None:
        record = self.seen.get(name)
        if record is None or record.holder != self.identity:
            return
        spec = dict(record.body.get("spec") or {})
        now = _micro_time(self.wall())
        spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=now, renewTime=now)
        try:
            written = await self.api.replace(name, self._body(name, record, spec))
        except Exception as e:
            log.warning("lease_release_failed", lease=name, error=_one_line(e))
            return
        meta = written.get("metadata") or {}
        self.seen[name] = _Seen(str(meta.get("resourceVersion", "")), "", 1, self.monotonic(),
                                written)  # fmt: skip

    def _publish(self) -> None:
        held = self.held_shards()
        self.status.leases(
            identity=self.identity,
            shards=self.count if self.sharded else 0,
            held=held,
            leader=bool(held),
            members=self.members if self.sharded else None,
        )
        self.metrics.leases(held, self.count, leader=bool(held))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# -- the real API -----------------------------------------------------------------------------


class _KubeLeases:
    """`LeaseApi` over kubernetes-asyncio's CoordinationV1Api, in one namespace."""

    def __init__(self, api: Any, client: Any, namespace: str, group: str, timeout: float) -> None:
        self._api = api
        self._client = client
        self._namespace = namespace
        self._selector = f"{GROUP_LABEL}={group}"
        self._timeout = timeout

    def _plain(self, obj: Any) -> dict[str, Any]:
        data: dict[str, Any] = self._client.sanitize_for_serialization(obj)
        return data

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException  # noqa: PLC0415

        try:
            return await method(*args, _request_timeout=self._timeout, **kwargs)
        except ApiException as e:
            if e.status == 409:
                raise LeaseConflictError(str(e.reason)) from None
            raise OSError(f"Kubernetes API answered {e.status} {e.reason}") from None

    async def list(self) -> list[dict[str, Any]]:
        leases = await self._call(
            self._api.list_namespaced_lease, self._namespace, label_selector=self._selector
        )
        return [self._plain(item) for item in leases.items]

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        written = await self._call(self._api.create_namespaced_lease, self._namespace, body)
        return self._plain(written)

    async def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        written = await self._call(self._api.replace_namespaced_lease, name, self._namespace, body)
        return self._plain(written)


@contextlib.asynccontextmanager
async def kube_api(
    kubeconfig: str, namespace: str, group: str, request_seconds: float
) -> AsyncIterator[LeaseApi]:
    """The Leases of `namespace` through the kubeconfig given, `KUBECONFIG`, the in-cluster
    service account or `~/.kube/config`, in that order."""
    from kubernetes_asyncio import client as kclient  # noqa: PLC0415
    from kubernetes_asyncio import config as kconfig  # noqa: PLC0415

    cfg = kclient.Configuration()
    env = os.environ.get("KUBECONFIG", "")
    if kubeconfig or env:
        await kconfig.load_kube_config(config_file=kubeconfig or env, client_configuration=cfg)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kconfig.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        await kconfig.load_kube_config(client_configuration=cfg)
    async with kclient.ApiClient(cfg) as client:
        api = kclient.CoordinationV1Api(client)
        yield _KubeLeases(api, client, namespace, group, request_seconds)
