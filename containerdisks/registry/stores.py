"""Where images are read from and written to: a registry namespace or a directory of layouts.

A registry spec (`--source-registry`, `--target-registry`, `--promote-registry`,
`--verify-registry`) is `host[:port]/namespace` or `oci:/dir`. `open_places` makes two of them
(a source and a target) into `Place`s: a store plus the namespace repositories live under.

Decisions:
- The stores are `containerdisks.oci`'s `RegistryClient` and `LayoutStore`; `Store` is the
  surface they share, written down here beside the one wrapper this layer adds
  (`RetryingStore`); an upload is either's own (`oci.BlobUpload` or `LayoutUpload`).
- `open_places` takes the specs and a `Connection` (TLS and timeouts), never the whole
  settings: a command that reads from a registry of its own (verify, promote) passes that spec.
- When source and target name the same registry host, one client (one connection pool, one
  token cache) serves both. A registry place can re-read its credentials, so that a
  long-running process follows a rotated Secret.
- Every store is a `RetryingStore`: its idempotent operations are retried under the caller's
  backoff; uploads pass through (a broken stream cannot be replayed here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import aiohttp
import structlog

from containerdisks import oci
from containerdisks.oci.layout import LayoutStore, LayoutUpload
from containerdisks.retry import RetryPolicy, retrying
from containerdisks.settings import ConfigError, Settings

__all__ = [
    "Connection",
    "Place",
    "RetryingStore",
    "Store",
    "Upload",
    "open_places",
    "same_place",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

#: A streamed blob upload of either store: `write` all chunks, then `commit`; leaving it
#: uncommitted cancels it. Both hash what they send: `commit()` without a digest returns the
#: descriptor (digest, size) computed on the way, so no caller hashes the blob again.
Upload = oci.BlobUpload | LayoutUpload


class Store(Protocol):
    """What the engine needs of a registry or a layout directory."""

    @property
    def host(self) -> str: ...

    async def get_manifest(self, repository: str, reference: str) -> oci.Manifest: ...

    async def head_manifest(self, repository: str, reference: str) -> oci.Descriptor | None: ...

    async def get_blob(self, repository: str, digest: str, *, max_size: int) -> bytes: ...

    async def read_blob(
        self, repository: str, digest: str, sink: Callable[[bytes], Awaitable[None]], *, size: int
    ) -> int:
        """`size`: the descriptor's; a body of another size is an `oci.BlobSizeError`."""
        ...

    async def has_blob(self, repository: str, digest: str) -> bool: ...

    async def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool: ...

    def blob_upload(self, repository: str) -> Upload: ...

    async def put_blob(self, repository: str, data: bytes) -> oci.Descriptor: ...

    async def put_manifest(
        self, repository: str, reference: str, media_type: str, data: bytes
    ) -> str: ...

    async def list_tags(self, repository: str) -> list[str]: ...

    async def delete_manifest(self, repository: str, digest: str) -> None: ...


class RetryingStore:
    """A `Store` whose idempotent operations are retried under `policy`.

    Uploads pass through untouched: a broken stream cannot be replayed here; the publisher
    restreams the whole arch instead.
    """

    def __init__(self, store: Store, policy: RetryPolicy) -> None:
        self.inner = store
        self.policy = policy

    @property
    def host(self) -> str:
        return self.inner.host

    def _run(self, what: str, op: Callable[[], Awaitable[_T]]) -> Awaitable[_T]:
        return retrying(
            f"{what} {self.inner.host}", op, self.policy, kind="registry", address=self.inner.host
        )

    async def get_manifest(self, repository: str, reference: str) -> oci.Manifest:
        return await self._run(
            f"GET {repository}:{reference}",
            lambda: self.inner.get_manifest(repository, reference),
        )

    async def head_manifest(self, repository: str, reference: str) -> oci.Descriptor | None:
        return await self._run(
            f"HEAD {repository}:{reference}",
            lambda: self.inner.head_manifest(repository, reference),
        )

    async def get_blob(self, repository: str, digest: str, *, max_size: int) -> bytes:
        return await self._run(
            f"GET {repository}@{digest}",
            lambda: self.inner.get_blob(repository, digest, max_size=max_size),
        )

    async def read_blob(
        self, repository: str, digest: str, sink: Callable[[bytes], Awaitable[None]], *, size: int
    ) -> int:
        # Not retried: the sink has already consumed what arrived.
        return await self.inner.read_blob(repository, digest, sink, size=size)

    async def has_blob(self, repository: str, digest: str) -> bool:
        return await self._run(
            f"HEAD {repository}@{digest}", lambda: self.inner.has_blob(repository, digest)
        )

    async def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        return await self.inner.mount_blob(repository, digest, from_repository)

    def blob_upload(self, repository: str) -> Upload:
        return self.inner.blob_upload(repository)

    async def put_blob(self, repository: str, data: bytes) -> oci.Descriptor:
        return await self._run(
            f"PUT blob into {repository}", lambda: self.inner.put_blob(repository, data)
        )

    async def put_manifest(
        self, repository: str, reference: str, media_type: str, data: bytes
    ) -> str:
        return await self._run(
            f"PUT {repository}:{reference}",
            lambda: self.inner.put_manifest(repository, reference, media_type, data),
        )

    async def list_tags(self, repository: str) -> list[str]:
        return await self._run(
            f"GET tags of {repository}", lambda: self.inner.list_tags(repository)
        )

    async def delete_manifest(self, repository: str, digest: str) -> None:
        # Idempotent: a retry after a lost answer finds it gone (the caller takes that as done).
        await self._run(
            f"DELETE {repository}@{digest}",
            lambda: self.inner.delete_manifest(repository, digest),
        )


@dataclass(frozen=True)
class Connection:
    """How every registry of a run is reached: TLS, timeouts and the bounds of a blob read."""

    insecure_skip_tls: bool
    ca_file: Path | None
    connect_timeout: float
    read_timeout: float
    #: A blob read slower than `blob_min_rate` bytes/s over `blob_rate_window` seconds, or
    #: longer than `blob_deadline` seconds, fails (temporary: retried).
    blob_min_rate: int
    blob_rate_window: float
    blob_deadline: float
    #: `--authfile`: the credentials file searched first (containers-auth.json(5)); None: the
    #: usual search alone (`oci.credentials`).
    auth_file: Path | None = None

    @classmethod
    def of(cls, settings: Settings) -> Connection:
        """The connection `settings` name (TLS, timeouts, the transfer bounds)."""
        return cls(
            insecure_skip_tls=settings.insecure_skip_tls,
            ca_file=settings.ca_file,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            blob_min_rate=settings.min_transfer_rate,
            blob_rate_window=settings.min_transfer_rate_window,
            blob_deadline=settings.download_deadline,
            auth_file=settings.auth_file,
        )


@dataclass(frozen=True)
class Place:
    """A store and the namespace under which `<name>` repositories live."""

    spec: str
    store: Store
    namespace: str
    is_layout: bool = False
    #: Re-reads this registry's credentials and starts using them if they changed (returns
    #: whether they did); None for a layout directory.
    reload_credentials: Callable[[], Awaitable[bool]] | None = field(default=None, compare=False)

    def repo(self, name: str) -> str:
        return f"{self.namespace}/{name}" if self.namespace else name

    def where(self, name: str, tag: str | None = None) -> str:
        return f"{self.store.host}/{self.repo(name)}" + (f":{tag}" if tag else "")


def _parse(spec: str, setting: str) -> tuple[str, str] | Path:
    if spec.startswith("oci:"):
        path = spec.removeprefix("oci:")
        if not path:
            raise ConfigError(f"invalid setting {setting}: {spec!r} names no directory")
        return Path(path)
    try:
        ref = oci.parse_registry(spec)
    except oci.InvalidReferenceError as e:
        raise ConfigError(f"invalid setting {setting}: {e}") from None
    return ref.host, ref.namespace


def same_place(source: str, target: str, *, target_setting: str = "target_registry") -> bool:
    """Whether a source and a target (`--source-registry` / `--target-registry` values) name
    the same repositories: `host[:port]/namespace` after canonicalising the host, or the same
    resolved directory. A malformed value is a ConfigError naming `target_setting` or
    `source_registry`."""
    pa, pb = _parse(source, "source_registry"), _parse(target, target_setting)
    if isinstance(pa, Path) and isinstance(pb, Path):
        return pa.resolve() == pb.resolve()
    return pa == pb


@asynccontextmanager
async def open_places(
    source: str,
    target: str,
    connection: Connection,
    backoff: RetryPolicy,
    *,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> AsyncIterator[tuple[Place, Place]]:
    """The places `source` and `target` name (registry specs); store operations retried under
    `backoff`. A malformed spec is a ConfigError naming `source_registry` or `target_registry`.

    `trace_configs` (aiohttp tracing, e.g. the daemon's metrics) observe every registry request.
    """
    specs = {"source": source, "target": target}
    parsed = {k: _parse(v, f"{k}_registry") for k, v in specs.items()}
    async with AsyncExitStack() as stack:
        stores: dict[str, Store] = {}
        reloaders: dict[str, Callable[[], Awaitable[bool]]] = {}
        places: dict[str, Place] = {}
        for key, spec in specs.items():
            p = parsed[key]
            if isinstance(p, Path):
                store_key = f"oci:{p.resolve()}"
                namespace = ""
            else:
                store_key, namespace = p
            if store_key not in stores:
                if isinstance(p, Path):
                    stores[store_key] = RetryingStore(LayoutStore(p), backoff)
                else:
                    try:
                        credentials = await asyncio.to_thread(
                            oci.find_credentials, spec, auth_file=connection.auth_file
                        )
                    except oci.CredentialsError as e:
                        raise ConfigError(f"credentials for {store_key}: {e}") from None
                    session = None
                    if trace_configs:
                        session = aiohttp.ClientSession(
                            read_bufsize=1 << 20,
                            cookie_jar=aiohttp.DummyCookieJar(),
                            trace_configs=list(trace_configs),
                        )
                        stack.push_async_callback(session.close)
                    client = oci.RegistryClient(
                        store_key,
                        session=session,
                        credentials=credentials,
                        insecure_skip_tls=connection.insecure_skip_tls,
                        ca_file=connection.ca_file,
                        connect_timeout=connection.connect_timeout,
                        read_timeout=connection.read_timeout,
                        blob_min_rate=connection.blob_min_rate,
                        blob_rate_window=connection.blob_rate_window,
                        blob_deadline=connection.blob_deadline,
                    )
                    opened = await stack.enter_async_context(client)
                    stores[store_key] = RetryingStore(opened, backoff)
                    reloaders[store_key] = _reloader(opened, spec, store_key, connection.auth_file)
            places[key] = Place(
                spec, stores[store_key], namespace, isinstance(p, Path), reloaders.get(store_key)
            )
        yield places["source"], places["target"]


def _reloader(
    client: oci.RegistryClient, spec: str, registry: str, auth_file: Path | None
) -> Callable[[], Awaitable[bool]]:
    async def reload() -> bool:
        """Look the credentials up again (files and helpers, as at start); when they cannot be
        read now (a Secret half-updated), keep the current ones and say so."""
        try:
            credentials = await asyncio.to_thread(oci.find_credentials, spec, auth_file=auth_file)
        except oci.CredentialsError as e:
            log.warning("credentials_unreadable", registry=registry, error=str(e))
            return False
        changed = client.use_credentials(credentials)
        if changed:
            source = credentials.source if credentials else "none: anonymous"
            log.info("credentials_reloaded", registry=registry, source=source)
        return changed

    return reload
