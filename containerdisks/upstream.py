"""HTTP for sources: the mirror table, one fetch per URL per pass, conditional GETs, retries.

Every URL a source asks for is *canonical* (what the distribution publishes). Before a request
leaves, it is rewritten through `upstream_mirrors` (plain prefixes, the longest match wins), and
so is every redirect target: redirects are followed here, by hand, so that a mirror table can
cover a CDN the canonical host redirects to. Errors and logs name the canonical URL.

Within a pass, concurrent and repeated requests for one URL share a single fetch (a task per URL),
so every entry and arch reading the same checksum file costs one request. Across passes in one
process the last `ETag` / `Last-Modified` are kept and sent back, and a 304 reuses the body.

Transient failures (connection errors, timeouts, 408/429/5xx) are retried with exponential
backoff and jitter, honouring `Retry-After`; the number of attempts is bounded.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import structlog
import yarl

from containerdisks.api import SourceError, UpstreamError
from containerdisks.checksums import ChecksumFormat, ChecksumParseError, parse_checksum_file

__all__ = [
    "Download",
    "DownloadInterruptedError",
    "HttpUpstream",
    "Mirrors",
    "RetryPolicy",
    "parse_mirror",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
_MAX_REDIRECTS = 10


def parse_mirror(spec: str) -> tuple[str, str]:
    """Split a `FROM=TO` mirror flag on the first `=`."""
    src, sep, dst = spec.partition("=")
    if not sep or not src or not dst:
        raise ValueError(f"upstream mirror {spec!r} is not FROM=TO")
    return src, dst


class Mirrors:
    """The rewrite table: plain string prefixes, the longest matching prefix wins."""

    def __init__(self, table: Mapping[str, str] | None = None) -> None:
        self._pairs = sorted((table or {}).items(), key=lambda kv: len(kv[0]), reverse=True)

    def rewrite(self, url: str) -> str:
        for src, dst in self._pairs:
            if url.startswith(src):
                return dst + url[len(src) :]
        return url


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        backoff = min(self.base_delay * (2.0**attempt), self.max_delay)
        jitter: float = 0.5 + random.random() / 2  # noqa: S311 - jitter, not crypto
        return backoff * jitter


@dataclass
class _Cached:
    etag: str | None
    last_modified: str | None
    body: bytes


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpUpstream:
    """The `api.Upstream` the core hands to sources. Use as an async context manager."""

    def __init__(
        self,
        mirrors: Mirrors | None = None,
        *,
        connect_timeout: float = 15.0,
        read_timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        max_metadata_bytes: int = 64 << 20,
        user_agent: str = "containerdisks",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.mirrors = mirrors or Mirrors()
        self._trace_configs = list(trace_configs)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._retry = retry or RetryPolicy()
        self._max = max_metadata_bytes
        self._headers = {"User-Agent": user_agent}
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._pass: dict[str, asyncio.Task[bytes]] = {}
        self._conditional: dict[str, _Cached] = {}
        #: Requests sent, by host of the URL actually requested (after mirroring).
        self.requests: Counter[str] = Counter()

    async def __aenter__(self) -> HttpUpstream:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers=self._headers,
            read_bufsize=1 << 20,
            trace_configs=self._trace_configs or None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._pass.values():
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def new_pass(self) -> None:
        """Forget this pass's answers; conditional-request validators are kept."""
        self._pass = {}

    # -- api.Upstream -------------------------------------------------------------------------

    async def get_bytes(self, url: str) -> bytes:
        task = self._pass.get(url)
        if task is None:
            task = asyncio.ensure_future(self._fetch(url))
            self._pass[url] = task
        return await asyncio.shield(task)

    async def get_text(self, url: str) -> str:
        body = await self.get_bytes(url)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{url}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    async def get_json(self, url: str) -> Any:
        text = await self.get_text(url)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceError(f"{url}: malformed JSON: {e.msg} at line {e.lineno}") from None

    async def get_checksums(self, url: str, fmt: ChecksumFormat) -> Mapping[str, str]:
        text = await self.get_text(url)
        try:
            return parse_checksum_file(text, fmt)
        except ChecksumParseError as e:
            raise SourceError(f"{url}: malformed checksum file: {e}") from None

    # -- internals ----------------------------------------------------------------------------

    async def _fetch(self, url: str) -> bytes:
        return await self._retrying(url, "upstream_retry", lambda: self._fetch_once(url))

    async def _retrying(
        self, url: str, event: str, attempt_once: Callable[[], Awaitable[_T]]
    ) -> _T:
        """Run `attempt_once` until it succeeds, retrying transient failures (bounded)."""
        attempt = 0
        while True:
            try:
                return await attempt_once()
            except _TransientError as t:
                attempt += 1
                if attempt >= self._retry.attempts:
                    raise UpstreamError(
                        url, f"{t.reason} (gave up after {attempt} attempts)", status=t.status
                    ) from None
                delay = self._retry.delay(attempt - 1, t.retry_after)
                log.warning(event, url=url, reason=t.reason, delay=round(delay, 2))
                await self._sleep(delay)

    async def _read_limited(self, url: str, resp: aiohttp.ClientResponse) -> bytes:
        if resp.content_length is not None and resp.content_length > self._max:
            raise UpstreamError(url, f"metadata of {resp.content_length} bytes is too large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > self._max:
                raise UpstreamError(url, f"metadata larger than {self._max} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _request(self, url: str, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """GET `url` through the mirror table, following redirects (each target mirrored too).

        Returns a 200 or 304 response, which the caller releases; raises `UpstreamError` or
        `_TransientError` otherwise.
        """
        if self._session is None:
            raise RuntimeError("HttpUpstream used outside 'async with'")
        target = self.mirrors.rewrite(url)
        for _ in range(_MAX_REDIRECTS + 1):
            self.requests[yarl.URL(target).host or ""] += 1
            try:
                resp = await self._session.get(
                    yarl.URL(target, encoded=True), headers=headers, allow_redirects=False
                )
            except aiohttp.ClientConnectorDNSError as e:
                # An unknown host does not heal in seconds: fail now, the next pass retries.
                raise UpstreamError(url, _describe(e)) from None
            except (TimeoutError, aiohttp.ClientError) as e:
                raise _TransientError(_describe(e), None, None) from None
            if resp.status in (200, 304):
                return resp
            resp.release()
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                nxt = resp.url.join(yarl.URL(resp.headers["Location"], encoded=True))
                target = self.mirrors.rewrite(str(nxt))
                continue
            reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
            if resp.status in _TRANSIENT:
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                raise _TransientError(reason, resp.status, retry_after)
            raise UpstreamError(url, reason, status=resp.status)
        raise UpstreamError(url, f"more than {_MAX_REDIRECTS} redirects")

    async def _fetch_once(self, url: str) -> bytes:
        cached = self._conditional.get(url)
        headers: dict[str, str] = {}
        if cached and cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        resp = await self._request(url, headers)
        try:
            if resp.status == 304:
                if cached is None:
                    raise UpstreamError(url, "HTTP 304 to an unconditional request")
                log.debug("upstream_not_modified", url=url)
                return cached.body
            try:
                body = await self._read_limited(url, resp)
            except (TimeoutError, aiohttp.ClientError) as e:
                raise _TransientError(_describe(e), None, None) from None
            self._conditional[url] = _Cached(
                resp.headers.get("ETag"), resp.headers.get("Last-Modified"), body
            )
            log.debug("upstream_fetched", url=url, bytes=len(body))
            return body
        finally:
            resp.release()

    @asynccontextmanager
    async def download(self, url: str, chunk_size: int = 1 << 20) -> AsyncIterator[Download]:
        """Open an image download (retrying the open only); the body is streamed, not cached.

        A failure mid-stream raises `UpstreamError` naming the canonical URL.
        """
        resp = await self._retrying(url, "download_retry", lambda: self._request(url, {}))
        try:
            if resp.status != 200:
                raise UpstreamError(url, f"HTTP {resp.status} to a download")
            yield Download(url, resp.content_length, _body(url, resp, chunk_size))
        finally:
            resp.release()


@dataclass(frozen=True)
class Download:
    """An open image download: canonical URL, size when the server announced it, the body."""

    url: str
    size: int | None
    chunks: AsyncIterator[bytes]


class DownloadInterruptedError(UpstreamError):
    """The connection broke or stalled while an image was streaming: worth another try."""


async def _body(url: str, resp: aiohttp.ClientResponse, chunk_size: int) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(chunk_size):
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as e:
        raise DownloadInterruptedError(url, f"download interrupted: {_describe(e)}") from None


class _TransientError(Exception):
    def __init__(self, reason: str, status: int | None, retry_after: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect to {e.host}:{e.port}: {e.os_error.strerror or e.os_error}"
    return f"{type(e).__name__}: {e}".rstrip(": ")
