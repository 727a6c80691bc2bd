"""HTTP for sources: the mirror table, one fetch per URL per pass, conditional GETs, retries.

Every URL a source asks for is *canonical* (what the distribution publishes). Before a request
leaves, it is rewritten through `upstream_mirrors` (plain prefixes, the longest match wins), and
so is every redirect target: redirects are followed here, by hand, so that a mirror table can
cover a CDN the canonical host redirects to. Errors and logs name the canonical URL; an HTTP or
transport failure also names the URL actually asked when a mirror rewrote it
(`<url>: <reason> (mirror <mirror url>)`), so that an air-gapped site sees which of its servers
failed. (A malformed answer names the canonical URL only: its mirror is in the mirror table.)

Within a pass, concurrent and repeated requests for one URL share a single fetch (a task per URL),
so every entry and arch reading the same checksum file costs one request. Across passes in one
process the last `ETag` / `Last-Modified` are kept and sent back, and a 304 reuses the body.

Signed files (`fetch_signed`) are fetched like any metadata, then verified by `openpgp.py`
against the pinned keyring the source names; one verification per file, signature and keyring
per pass, shared like the fetch. A refused signature is not retried: only its fetch is.

Transient failures (connection errors, timeouts, 408/429/5xx) are retried under
`containerdisks.retry`'s policy (exponential backoff with jitter, `Retry-After` honoured, bounded
attempts), each retry logged as `upstream_retry` (metadata) or `download_retry` (an image).

Upstream servers are hostile until checked, so every transfer is bounded:
- Metadata: at most `MAX_METADATA_BYTES` (a declared Content-Length over it is refused before
  reading), within `metadata_deadline` seconds per URL, retries included; JSON nested deeper than
  `MAX_JSON_DEPTH` is refused by a pre-scan before it is parsed (no RecursionError, and no
  plugin has to walk a pathological tree).
- Image downloads: a `TransferGuard` (sans-I/O, fed by the body and a watchdog task) fails a
  download that brings fewer than `min_transfer_rate` bytes per second over a window of
  `rate_window` seconds (tumbling windows: a download that slows down fails at most two windows
  later), or that is not done within `download_deadline`. Both are `DownloadInterruptedError`s,
  transient: the publisher streams the arch again. The byte limits of an image belong to the
  publisher, which knows what the metadata declared.
- Bytes are taken as the server stores them: every request says `Accept-Encoding: identity` and
  nothing is decoded on the way (`auto_decompress=False`), so the checksum covers exactly the
  published file and no `Content-Encoding` can inflate a body past the byte limits. An answer
  that is content-encoded all the same is refused in one line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import structlog
import yarl

from containerdisks import openpgp
from containerdisks.api import Evidence, Signed, SourceError, UpstreamError
from containerdisks.checksums import ChecksumFormat, ChecksumParseError, parse_checksum_file
from containerdisks.retry import (
    RetryEvent,
    RetryPolicy,
    parse_retry_after,
    retrying,
    temporary_status,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_METADATA_BYTES",
    "Download",
    "DownloadInterruptedError",
    "HttpUpstream",
    "Mirrors",
    "TransferGuard",
    "json_depth",
    "parse_mirror",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_MAX_REDIRECTS = 10

#: The largest metadata answer (releases.json, a checksum file): real ones are below 1 MiB.
MAX_METADATA_BYTES = 16 << 20
#: The deepest JSON nesting accepted (Debian's image JSON nests 5 deep, Fedora's 2).
MAX_JSON_DEPTH = 64

#: A JSON string, or an unterminated one up to the end. Possessive: one linear scan, whatever
#: the text (a backtracking pattern took 100 s on 160 KB of `\"` with no closing quote).
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
#: Opening brackets to 1, closing ones to 0xff (-1 as a signed byte).
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON `text`, without parsing it.

    Strings are cut out first (a bracket inside one does not count; an unterminated string runs
    to the end, as for the parser), in one linear pass; then the running sum of
    +1/-1 per bracket is taken in C (array + itertools), so 16 MiB of brackets cost well under
    a second. Malformed JSON may be over-counted, never under-counted where it parses.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if not brackets:
        return 0
    steps = array("b", brackets.encode("ascii").translate(_DEPTH_STEP))
    return max(itertools.accumulate(steps))


class TransferGuard:
    """When a download is too slow or too long: sans-I/O, fed with `(now, bytes)`.

    Time is cut in tumbling windows of `window` seconds from `start`; a window that brings fewer
    than `min_rate * window` bytes fails the transfer when it closes, and so does `deadline`
    seconds after `start`. `min_rate` 0 turns the rate check off.
    """

    def __init__(self, *, min_rate: int, window: float, deadline: float, start: float) -> None:
        self.min_rate = min_rate
        self.window = window
        self.start = start
        self.deadline_at = start + deadline
        self.deadline = deadline
        self._window_end = start + window
        self._in_window = 0
        self.total = 0
        #: Why the transfer was stopped, once `check` said so.
        self.failure: str | None = None

    def record(self, nbytes: int) -> None:
        self._in_window += nbytes
        self.total += nbytes

    def next_check(self) -> float:
        """When `check` must run next, even if no byte arrives."""
        if not self.min_rate:
            return self.deadline_at
        return min(self._window_end, self.deadline_at)

    def check(self, now: float) -> str | None:
        """Why the transfer must stop at `now` (also kept in `failure`), or None."""
        if self.failure is None:
            self.failure = self._why(now)
        return self.failure

    def _why(self, now: float) -> str | None:
        if now >= self.deadline_at:
            return f"download not finished within download_deadline ({self.deadline:g} s)"
        if not self.min_rate:
            return None
        while now >= self._window_end:
            if self._in_window < self.min_rate * self.window:
                return (
                    f"download slower than min_transfer_rate ({self.min_rate} bytes/s) over "
                    f"{self.window:g} s ({self._in_window} bytes in the last window)"
                )
            self._in_window = 0
            self._window_end += self.window
        return None


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


@dataclass
class _Cached:
    etag: str | None
    last_modified: str | None
    body: bytes


class HttpUpstream:
    """The `api.Upstream` the core hands to sources. Use as an async context manager."""

    def __init__(
        self,
        mirrors: Mirrors | None = None,
        *,
        connect_timeout: float = 15.0,
        read_timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        max_metadata_bytes: int = MAX_METADATA_BYTES,
        metadata_deadline: float = 60.0,
        min_transfer_rate: int = 1_000_000,
        rate_window: float = 60.0,
        download_deadline: float = 7200.0,
        user_agent: str = "containerdisks",
        sleep: Callable[[float], Awaitable[None]] | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        keyrings: openpgp.Keyrings | None = None,
    ) -> None:
        """`keyrings`: the pinned keys `fetch_signed` verifies against (default: the
        package's own, `containerdisks/keys/`)."""
        self.keyrings = keyrings
        self.mirrors = mirrors or Mirrors()
        self._trace_configs = list(trace_configs)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._retry = retry or RetryPolicy()
        if sleep is not None:
            self._retry = replace(self._retry, sleep=sleep)
        self._max = max_metadata_bytes
        self._metadata_deadline = metadata_deadline
        self._min_rate = min_transfer_rate
        self._rate_window = rate_window
        self._download_deadline = download_deadline
        self._headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        self._session: aiohttp.ClientSession | None = None
        self._pass: dict[str, asyncio.Task[bytes]] = {}
        self._verified: dict[tuple[str, str | None, str], asyncio.Task[Signed]] = {}
        self._conditional: dict[str, _Cached] = {}
        #: Requests sent, by host of the URL actually requested (after mirroring).
        self.requests: Counter[str] = Counter()

    async def __aenter__(self) -> HttpUpstream:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers=self._headers,
            auto_decompress=False,
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
        self._verified = {}

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
        if len(text) < _INLINE_JSON:
            return _parse_json(url, text)
        return await asyncio.to_thread(_parse_json, url, text)

    async def get_checksums(self, url: str, fmt: ChecksumFormat) -> Mapping[str, str]:
        text = await self.get_text(url)
        try:
            return parse_checksum_file(text, fmt)
        except ChecksumParseError as e:
            raise SourceError(f"{url}: malformed checksum file: {e}") from None

    async def fetch_signed(
        self, url: str, *, signature_url: str | None = None, keyring: str
    ) -> Signed:
        key = (url, signature_url, keyring)
        task = self._verified.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch_signed(url, signature_url, keyring))
            self._verified[key] = task
        return await asyncio.shield(task)

    async def _fetch_signed(self, url: str, signature_url: str | None, keyring: str) -> Signed:
        if self.keyrings is None:
            self.keyrings = openpgp.Keyrings.pinned()
        ring = self.keyrings.get(keyring)
        signed = await self.get_bytes(url)
        signature = None if signature_url is None else await self.get_bytes(signature_url)
        where = signature_url or url
        try:
            verified = await openpgp.verify(ring, signed, signature)
        except openpgp.SignatureError as e:
            raise openpgp.SignatureError(f"{where}: signature refused: {e}") from None
        try:
            text = verified.data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{url}: signed text is not UTF-8 ({e.reason})") from None
        log.debug("upstream_signature_ok", url=url, key=verified.fingerprint)
        evidence = Evidence("openpgp", verified.fingerprint, verified.signed_at, url)
        return Signed(text, evidence)

    # -- internals ----------------------------------------------------------------------------

    async def _fetch(self, url: str) -> bytes:
        """The body of `url`, within `metadata_deadline` seconds, retries included."""
        try:
            async with asyncio.timeout(self._metadata_deadline):
                return await self._retrying(url, "upstream_retry", lambda: self._fetch_once(url))
        except TimeoutError:
            raise UpstreamError(
                url,
                f"no complete answer within metadata_deadline ({self._metadata_deadline:g} s)",
                mirror=self.mirrors.rewrite(url),
            ) from None

    async def _retrying(
        self, url: str, event: str, attempt_once: Callable[[], Awaitable[_T]]
    ) -> _T:
        """Run `attempt_once` until it succeeds, retrying transient failures (bounded)."""

        def logged(retry: RetryEvent, _: BaseException) -> None:
            log.warning(event, url=url, reason=retry.reason, delay=round(retry.delay, 2))

        def gave_up(error: BaseException, attempts: int) -> UpstreamError:
            status, mirror = None, self.mirrors.rewrite(url)
            if isinstance(error, _TransientError):
                status, mirror = error.status, error.mirror or mirror
            return UpstreamError(
                url, f"{error} (gave up after {attempts} attempts)", status=status, mirror=mirror
            )

        return await retrying(
            url,
            attempt_once,
            self._retry,
            kind="upstream",
            address=url,
            on_retry=logged,
            exhausted=gave_up,
        )

    async def _read_limited(self, url: str, resp: aiohttp.ClientResponse) -> bytes:
        mirror = str(resp.url)
        if resp.content_length is not None and resp.content_length > self._max:
            raise UpstreamError(
                url,
                f"metadata of {resp.content_length} bytes is larger than {self._max} bytes",
                mirror=mirror,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > self._max:
                raise UpstreamError(url, f"metadata larger than {self._max} bytes", mirror=mirror)
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
                raise UpstreamError(url, _describe(e), mirror=target) from None
            except (TimeoutError, aiohttp.ClientError) as e:
                raise _TransientError(_describe(e), None, None, target) from None
            if resp.status in (200, 304):
                encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    resp.release()
                    raise UpstreamError(
                        url,
                        f"answered with Content-Encoding {encoding[:40]!r}, not asked for",
                        mirror=target,
                    )
                return resp
            resp.release()
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                nxt = resp.url.join(yarl.URL(resp.headers["Location"], encoded=True))
                target = self.mirrors.rewrite(str(nxt))
                continue
            reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
            if temporary_status(resp.status):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                raise _TransientError(reason, resp.status, retry_after, target)
            raise UpstreamError(url, reason, status=resp.status, mirror=target)
        raise UpstreamError(url, f"more than {_MAX_REDIRECTS} redirects", mirror=target)

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
                    raise UpstreamError(
                        url, "HTTP 304 to an unconditional request", mirror=str(resp.url)
                    )
                log.debug("upstream_not_modified", url=url)
                return cached.body
            try:
                body = await self._read_limited(url, resp)
            except (TimeoutError, aiohttp.ClientError) as e:
                raise _TransientError(_describe(e), None, None, str(resp.url)) from None
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

        A failure mid-stream raises `UpstreamError` naming the canonical URL; a body too slow
        or too long (see `TransferGuard`) a `DownloadInterruptedError`, which is worth a retry.
        """
        loop = asyncio.get_running_loop()
        guard = TransferGuard(
            min_rate=self._min_rate,
            window=self._rate_window,
            deadline=self._download_deadline,
            start=loop.time(),
        )
        resp = await self._retrying(url, "download_retry", lambda: self._request(url, {}))
        watchdog = asyncio.ensure_future(_watch(url, resp, guard))
        try:
            if resp.status != 200:
                raise UpstreamError(url, f"HTTP {resp.status} to a download", mirror=str(resp.url))
            yield Download(url, resp.content_length, _body(url, resp, chunk_size, guard, watchdog))
        finally:
            watchdog.cancel()
            resp.release()


@dataclass(frozen=True)
class Download:
    """An open image download: canonical URL, size when the server announced it, the body."""

    url: str
    size: int | None
    chunks: AsyncIterator[bytes]


class DownloadInterruptedError(UpstreamError):
    """The connection broke or stalled while an image was streaming: worth another try."""

    temporary = True


async def _body(
    url: str,
    resp: aiohttp.ClientResponse,
    chunk_size: int,
    guard: TransferGuard,
    watchdog: asyncio.Future[None],
) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(chunk_size):
            guard.record(len(chunk))
            yield chunk
    except (TimeoutError, aiohttp.ClientError, _TooSlowError) as e:
        mirror = str(resp.url)
        if guard.failure is not None:  # the watchdog cut it: say why, not how
            raise DownloadInterruptedError(url, guard.failure, mirror=mirror) from None
        raise DownloadInterruptedError(
            url, f"download interrupted: {_describe(e)}", mirror=mirror
        ) from None
    finally:
        watchdog.cancel()  # the body is done: the time after it is the consumer's


class _TooSlowError(Exception):
    """Set on a download's stream by its watchdog: the reason is the message."""


async def _watch(url: str, resp: aiohttp.ClientResponse, guard: TransferGuard) -> None:
    """Wake at each of the guard's checks; when it says stop, fail the body's pending read and
    drop the connection. Costs nothing per chunk (the body only counts bytes)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(max(0.0, guard.next_check() - loop.time()))
        reason = guard.check(loop.time())
        if reason is not None:
            log.warning("download_too_slow", url=url, reason=reason)
            resp.content.set_exception(_TooSlowError(reason))
            resp.close()
            return


_INLINE_JSON = 1 << 20  # larger JSON is scanned and parsed in a worker thread


def _parse_json(url: str, text: str) -> Any:
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise SourceError(f"{url}: JSON nested {depth} deep, more than {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{url}: malformed JSON: {e.msg} at line {e.lineno}") from None
    except ValueError as e:  # e.g. a number of more digits than int() converts
        raise SourceError(f"{url}: malformed JSON: {e}") from None
    except RecursionError:  # not reached after the pre-scan; kept as the last line of defence
        raise SourceError(f"{url}: JSON nested too deep") from None


class _TransientError(Exception):
    """An attempt failed for a reason that may pass; the message is the reason."""

    temporary = True

    def __init__(
        self, reason: str, status: int | None, retry_after: float | None, mirror: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.mirror = mirror  # the URL asked, for the error when retries give up


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect to {e.host}:{e.port}: {e.os_error.strerror or e.os_error}"
    return f"{type(e).__name__}: {e}".rstrip(": ")
