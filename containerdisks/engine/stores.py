"""Where images are read from and written to: a registry namespace or a directory of layouts.

`--source-registry` / `--target-registry` take `host[:port]/namespace` or `oci:/dir`. Both
become a `Place`: a store (a `RegistryClient` or a `LayoutStore`, which share one surface) plus
the namespace repositories live under. When source and target name the same registry host, one
client (one connection pool, one token cache) serves both. A registry place can re-read its
credentials, so that a long-running process follows a rotated Secret. Every store is wrapped in
a `RetryingStore`: its idempotent operations are retried under `containerdisks.retry`'s policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

import aiohttp
import structlog

from containerdisks import oci
from containerdisks.oci.layout import LayoutStore
from containerdisks.retry import RetryPolicy, retrying
from containerdisks.settings import ConfigError, Settings

__all__ = ["BlobUpload", "Place", "RetryingStore", "Store", "open_places", "same_place"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


class BlobUpload(Protocol):
    """A streamed blob upload: `write` all chunks, then `commit`; leaving it uncommitted
    cancels it."""

    async def __aenter__(self) -> BlobUpload: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def digest(self) -> str:
        """The digest of what was sent so far (the blob's, once `write` returned)."""
        ...

    @property
    def size(self) -> int: ...

    async def write(
        self, chunks: AsyncIterator[bytes], *, size: int | None = None, digest: str | None = None
    ) -> None:
        """`size`: sent as Content-Length; `digest`: the bytes are checked against it by their
        producer, so the upload need not hash them again (the registry does)."""
        ...

    async def commit(self, digest: str) -> object: ...


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

    def blob_upload(self, repository: str) -> BlobUpload: ...

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

    def blob_upload(self, repository: str) -> BlobUpload:
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
    settings: Settings,
    backoff: RetryPolicy | None = None,
    *,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> AsyncIterator[tuple[Place, Place]]:
    """The source and target places of one run; store operations retried under `backoff`.

    `trace_configs` (aiohttp tracing, e.g. the daemon's metrics) observe every registry request.
    """
    policy = backoff or RetryPolicy.for_registry(settings.retries)
    specs = {"source": settings.source_registry, "target": settings.target}
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
                    stores[store_key] = RetryingStore(LayoutStore(p), policy)
                else:
                    try:
                        credentials = await asyncio.to_thread(oci.find_credentials, spec)
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
                        insecure_skip_tls=settings.insecure_skip_tls,
                        ca_file=settings.ca_file,
                        connect_timeout=settings.connect_timeout,
                        read_timeout=settings.read_timeout,
                        blob_min_rate=settings.min_transfer_rate,
                        blob_rate_window=settings.min_transfer_rate_window,
                        blob_deadline=settings.download_deadline,
                    )
                    opened = await stack.enter_async_context(client)
                    stores[store_key] = RetryingStore(opened, policy)
                    reloaders[store_key] = _reloader(opened, spec, store_key)
            places[key] = Place(
                spec, stores[store_key], namespace, isinstance(p, Path), reloaders.get(store_key)
            )
        yield places["source"], places["target"]


def _reloader(
    client: oci.RegistryClient, spec: str, registry: str
) -> Callable[[], Awaitable[bool]]:
    async def reload() -> bool:
        """Look the credentials up again (files and helpers, as at start); when they cannot be
        read now (a Secret half-updated), keep the current ones and say so."""
        try:
            credentials = await asyncio.to_thread(oci.find_credentials, spec)
        except oci.CredentialsError as e:
            log.warning("credentials_unreadable", registry=registry, error=str(e))
            return False
        changed = client.use_credentials(credentials)
        if changed:
            source = credentials.source if credentials else "none: anonymous"
            log.info("credentials_reloaded", registry=registry, source=source)
        return changed

    return reload
