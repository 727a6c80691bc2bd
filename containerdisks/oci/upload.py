"""One blob upload session: POST, then the bytes (one streamed PATCH or fixed chunks), then PUT.

Decision: the data is an async iterator of bytes whose digest and size nobody knows in advance
(the layer is compressed while it is sent), so the session hashes what it sends on the way and
refuses to commit under any digest but the one it computed; hashing of big chunks runs in a
worker thread (hashlib releases the GIL) and overlaps with sending them. A streamed body cannot
be sent twice, so nothing here retries it.

Leaving the session without a commit cancels the upload with ``DELETE`` on its *latest*
``Location``: its upload state names the bytes the registry holds, and distribution refuses a
``DELETE`` carrying an older state ("upload resumed at wrong offset") and keeps the partial
upload until its purge, days later. So a PATCH is never simply cut off when it can be ended:
- a source that fails, or a cancellation (a signal), ends a chunked-encoding body at once
  (the pending read of the source is interrupted), the registry answers the PATCH with the
  new ``Location``, and that is deleted; a fixed-size chunk PATCH is let finish first;
- waiting for that answer (``SETTLE_TIMEOUT``) and the ``DELETE`` (``CANCEL_TIMEOUT``) are
  bounded, run to their end even when the task is cancelled again meanwhile, and never raise
  over the error that ended the upload (a failed ``DELETE`` is logged; a registry purges
  stale uploads in the end).
A body sent with ``Content-Length`` (``write(size=)``) cannot be ended early: when its source
fails, the connection is dropped and the ``DELETE`` may come too late for the registry.

How the bytes go (distribution-spec §"Pushing blobs"; docs/architecture.md "How blobs go up"):

- ``chunk_size=None``: each :meth:`BlobUpload.write` is one ``PATCH`` whose body streams with
  ``Transfer-Encoding: chunked`` (or with ``Content-Length`` when the caller gives ``size``).
  distribution, Quay and Docker Hub take it; it is the fastest way through a registry.
- ``chunk_size=N``: ``PATCH`` requests of exactly ``max(N, OCI-Chunk-Min-Length)`` bytes with
  ``Content-Length`` and an inclusive ``Content-Range``, the last one shorter; for registries
  that cap a request (GHCR: 4 MiB) or refuse chunked transfer encoding (ACR).
- Every response's ``Location`` replaces the last one. It is kept byte-exact (its query holds the
  registry's upload state) and resolved against the URL of the response it came in.
- ``PUT <location>&digest=<digest>`` ends the upload; the registry checks the digest again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

import yarl

from containerdisks.oci.digest import Hashing, parse_digest
from containerdisks.oci.errors import (
    DigestMismatchError,
    OCIError,
    ProtocolError,
    RegistryError,
    error_from_response,
)
from containerdisks.oci.media import Descriptor
from containerdisks.oci.messages import Response

__all__ = [
    "CHUNKED_UPLOAD_HOSTS",
    "OCTET_STREAM",
    "BlobUpload",
    "default_chunk_size",
    "next_location",
    "with_digest",
]

logger = logging.getLogger("containerdisks.oci")

OCTET_STREAM: Final = "application/octet-stream"
#: How long a cancel (``DELETE``) may take before it is given up.
CANCEL_TIMEOUT: Final = 10.0
#: How long a PATCH cut short (by a cancellation) may take to answer with its ``Location``.
SETTLE_TIMEOUT: Final = 4.0
_MIB: Final = 1024 * 1024

#: Registries known to refuse one streamed PATCH, and the chunk size they take.
#: GHCR answers 416 above 4 MiB per request; ACR refuses ``Transfer-Encoding: chunked`` and some
#: tiers refuse bodies over ~20 MB; public ECR stalls on chunked transfer encoding.
CHUNKED_UPLOAD_HOSTS: Final = {
    "ghcr.io": 4 * _MIB,
    "public.ecr.aws": 4 * _MIB,
}
_CHUNKED_UPLOAD_SUFFIXES: Final = {".azurecr.io": 4 * _MIB}


def default_chunk_size(host: str) -> int | None:
    """The chunk size uploads to ``host`` need, or None when one streamed PATCH works."""
    name = host.lower().rsplit(":", 1)[0] if host.count(":") == 1 else host.lower()
    if name in CHUNKED_UPLOAD_HOSTS:
        return CHUNKED_UPLOAD_HOSTS[name]
    return next(
        (size for sfx, size in _CHUNKED_UPLOAD_SUFFIXES.items() if name.endswith(sfx)), None
    )


def next_location(response: Response, subject: str) -> yarl.URL:
    """The upload URL a response names, byte-exact, resolved against the response's URL.

    ``encoded=True``: a ``str`` would be re-quoted by yarl and break the registry's upload state
    (``_state=ab%2Fcd%3D%3D`` would arrive as ``_state=ab/cd%3D%3D``).
    """
    location = response.header("Location")
    if not location:
        raise ProtocolError(f"{subject}: HTTP {response.status} without Location")
    target = response.url.join(yarl.URL(location, encoded=True))
    if target.scheme not in {"http", "https"} or not target.host:
        raise ProtocolError(f"{subject}: unusable upload Location")
    return target


def with_digest(location: yarl.URL, digest: str) -> yarl.URL:
    """``location`` with ``digest=<digest>`` appended, its own query left byte-exact."""
    text = str(location)
    fragment = ""
    if "#" in text:
        text, fragment = text.split("#", 1)
        fragment = "#" + fragment
    sep = "&" if location.raw_query_string else ("" if text.endswith("?") else "?")
    param = "digest=" + urllib.parse.quote(digest, safe="")
    return yarl.URL(f"{text}{sep}{param}{fragment}", encoded=True)


def _range_end(response: Response) -> int | None:
    """The last byte offset of a ``Range: 0-<end>`` header (distribution omits ``bytes=``)."""
    value = response.header("Range")
    if not value:
        return None
    value = value.strip().removeprefix("bytes=")
    start, sep, end = value.partition("-")
    if not sep or not start.isdigit() or not end.isdigit():
        return None
    return int(end)


class Send(Protocol):
    """How a session talks to its registry: one authenticated request (the client's)."""

    def __call__(
        self,
        method: str,
        url: yarl.URL,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        stream: AsyncIterable[bytes] | None = None,
    ) -> Awaitable[Response]: ...


class BlobUpload:
    """An upload session for one blob; get one from ``RegistryClient.blob_upload(repository)``.

    ::

        async with client.blob_upload("containerdisks/fedora") as upload:
            await upload.write(chunks)            # an async iterator of bytes; may be repeated
            print(upload.sent, upload.digest)     # bytes sent, sha256 of them
            descriptor = await upload.commit(expected_digest)

    Leaving the block without :meth:`commit` (by an exception or not) cancels the upload.
    """

    def __init__(
        self,
        send: Send,
        start: Callable[[], Awaitable[tuple[yarl.URL, int]]],
        *,
        subject: str,
        chunk_size: int | None,
        on_stream_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self._send = send
        self._start = start
        self._subject = subject
        self._chunk_size = chunk_size
        self._on_stream_refused = on_stream_refused
        self._location: yarl.URL | None = None
        self._hash = hashlib.sha256()
        self._checked_digest: str | None = None  # the caller checks the bytes (write(digest=))
        self._read = 0  # bytes taken from the caller's iterators and hashed
        self._acked = 0  # bytes the registry has confirmed (chunked mode)
        self._buffer = bytearray()
        self._source_error: BaseException | None = None
        self._writing = False
        self._state = "new"
        self._stopping = False  # end the streamed body now (the upload is being given up)
        self._pulling: asyncio.Task[Any] | None = None  # the task awaiting the source's next chunk

    def __repr__(self) -> str:
        return f"<BlobUpload {self._subject} {self._state} sent={self.sent}>"

    # -- what callers read ------------------------------------------------------------------

    @property
    def sent(self) -> int:
        """Bytes handed to the registry so far (for progress)."""
        return self._read if self._chunk_size is None else self._acked

    @property
    def size(self) -> int:
        """Bytes written into the session so far (all of them once :meth:`write` returned)."""
        return self._read

    @property
    def digest(self) -> str:
        """``sha256:`` of the bytes written so far; final once the last :meth:`write` returned.
        After ``write(digest=...)``, that digest (the caller checked the bytes)."""
        if self._checked_digest is not None:
            return self._checked_digest
        return f"sha256:{self._hash.hexdigest()}"

    @property
    def committed(self) -> bool:
        """Whether the registry accepted the blob."""
        return self._state == "committed"

    @property
    def chunk_size(self) -> int | None:
        """Bytes per PATCH, or None for one streamed PATCH per :meth:`write`."""
        return self._chunk_size

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            await self.cancel()

    async def start(self) -> None:
        """Open the upload (``POST``); :meth:`__aenter__` does this."""
        if self._state != "new":
            raise RuntimeError(f"{self._subject}: upload already started")
        location, min_chunk = await self._start()
        self._location = location
        if self._chunk_size is not None:
            self._chunk_size = max(self._chunk_size, min_chunk)
        self._state = "open"

    def _check_open(self) -> yarl.URL:
        if self._state != "open" or self._location is None:
            raise RuntimeError(f"{self._subject}: upload is {self._state}, not open")
        if self._writing:
            raise RuntimeError(f"{self._subject}: a write is already running")
        return self._location

    async def cancel(self) -> None:
        """Give the upload up: ``DELETE`` its latest location, ignoring any failure (bounded,
        and carried to its end when the task is cancelled meanwhile). Safe to call twice."""
        if self._state != "open" or self._location is None:
            self._state = "cancelled" if self._state != "committed" else self._state
            return
        self._state = "cancelled"
        await _to_the_end(self._delete(self._location))

    async def _delete(self, location: yarl.URL) -> None:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                response = await self._send("DELETE", location)
        except Exception as exc:  # never raised over the error that ended the upload
            logger.warning("%s: cancelling the upload failed: %s", self._subject, exc)
            return
        if response.status in {200, 202, 204}:
            logger.debug("%s: upload cancelled (HTTP %d)", self._subject, response.status)
        else:
            logger.warning(
                "%s: cancelling the upload failed: HTTP %d", self._subject, response.status
            )

    async def _settle(self, request: asyncio.Future[Response]) -> None:
        """A PATCH whose caller was cancelled: end its body, and take the ``Location`` it
        answers with, so that :meth:`cancel` deletes what the registry really holds."""
        self._stopping = True
        pulling = self._pulling
        if pulling is not None and pulling is not asyncio.current_task():
            pulling.cancel()  # a source that is waiting for bytes: the body ends now
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                response = await asyncio.shield(request)
        except (Exception, asyncio.CancelledError) as exc:
            request.cancel()
            logger.debug("%s: the cut-short PATCH did not answer: %r", self._subject, exc)
            return
        if response.status == 202 and response.header("Location"):
            with contextlib.suppress(ProtocolError):
                self._location = next_location(response, self._subject)

    # -- the bytes --------------------------------------------------------------------------

    async def _hashed(
        self, chunks: AsyncIterable[bytes], size: int | None, *, end_on_error: bool = False
    ) -> AsyncIterator[bytes]:
        """``chunks``, hashed and counted on the way; the caller's own exception is kept.

        ``end_on_error``: when ``chunks`` fails, end the body here instead of breaking the
        connection, so the registry finishes the request and the upload can be cancelled
        (distribution refuses a ``DELETE`` that races with a PATCH it is still reading).
        """
        start = self._read
        # hashed in batches in a worker thread while the chunks are sent; complete at the end
        hashing = Hashing(self._hash)
        source = aiter(chunks)
        try:
            while not self._stopping:
                self._pulling = asyncio.current_task()
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if not self._stopping:
                        raise
                    # _settle interrupted the wait for the source: end the body here
                    self._uncancel()
                    return
                finally:
                    self._pulling = None
                if not chunk:
                    continue
                if size is not None and self._read - start + len(chunk) > size:
                    raise ValueError(f"{self._subject}: more than the {size} bytes announced")
                # else the caller checks these bytes (and the registry checks them again)
                if self._checked_digest is None and hashing.feed(chunk):
                    await hashing.flush()
                self._read += len(chunk)
                yield chunk
            if self._stopping:
                return  # given up: the body ends short, the upload is deleted
            await hashing.finish()
            if size is not None and self._read - start != size:
                raise ValueError(
                    f"{self._subject}: {self._read - start} bytes, not the {size} announced"
                )
        except Exception as exc:
            self._source_error = exc
            if end_on_error:
                return
            raise
        finally:
            hashing.cancel()

    @staticmethod
    def _uncancel() -> None:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()

    async def write(
        self, chunks: AsyncIterable[bytes], *, size: int | None = None, digest: str | None = None
    ) -> None:
        """Send every chunk of ``chunks``, hashing them on the way.

        ``size``, when known, is sent as ``Content-Length`` of a streamed PATCH (some
        registries refuse chunked transfer encoding) and checked against what came. An
        exception raised by ``chunks`` propagates unchanged and leaves the upload unusable.

        ``digest``: the whole blob in this one write, already being checked against ``digest``
        by whoever produces ``chunks`` (a copy of a blob read by digest, which raises before
        its last chunk on a mismatch); the session does not hash it a second time, and
        :meth:`commit` accepts only that digest, which the registry verifies again.
        """
        location = self._check_open()
        if digest is not None:
            if self._read:
                raise RuntimeError(f"{self._subject}: write(digest=) must be the only write")
            parse_digest(digest)
            self._checked_digest = digest
        self._writing = True
        try:
            if self._chunk_size is None:
                await self._write_stream(location, chunks, size)
            else:
                await self._write_chunks(chunks, size)
        except BaseException:
            # what the registry holds is unknown now: give the upload up at once
            await self.cancel()
            raise
        finally:
            self._writing = False

    async def _write_stream(
        self, location: yarl.URL, chunks: AsyncIterable[bytes], size: int | None
    ) -> None:
        headers = [("Content-Type", OCTET_STREAM)]
        if size is not None:
            headers.append(("Content-Length", str(size)))
        self._source_error = None
        body = self._hashed(chunks, size, end_on_error=size is None)
        request = asyncio.ensure_future(self._send("PATCH", location, headers=headers, stream=body))
        try:
            response = await asyncio.shield(request)
        except asyncio.CancelledError:
            if size is None:  # a chunked body can end here; one of a fixed length cannot
                await self._settle(request)
            else:
                request.cancel()
            raise
        except OCIError:
            if self._source_error is not None:
                raise self._source_error from None
            raise
        if self._source_error is not None:
            if response.status == 202 and response.header("Location"):
                self._location = next_location(response, self._subject)  # to cancel it
            raise self._source_error
        if response.status != 202:
            error = self._error(response)
            if response.status in {411, 413, 416} or error.code == "CONTENT_LENGTH_INVALID":
                # the registry wants bounded requests: later uploads to it go in chunks
                self._on_stream_refused()
                error.temporary = True
            raise error
        self._location = next_location(response, self._subject)
        end = _range_end(response)
        if end is not None and end + 1 != self._read:
            raise ProtocolError(
                f"{self._subject}: registry has {end + 1} bytes after a PATCH of {self._read}"
            )

    async def _write_chunks(self, chunks: AsyncIterable[bytes], size: int | None) -> None:
        assert self._chunk_size is not None
        async for chunk in self._hashed(chunks, size):
            self._buffer += chunk
            while len(self._buffer) >= self._chunk_size:
                piece = bytes(self._buffer[: self._chunk_size])
                del self._buffer[: self._chunk_size]
                await self._patch_chunk(piece)

    async def _patch_chunk(self, piece: bytes) -> None:
        assert self._location is not None
        first, last = self._acked, self._acked + len(piece) - 1
        request = asyncio.ensure_future(
            self._send(
                "PATCH",
                self._location,
                headers=[("Content-Type", OCTET_STREAM), ("Content-Range", f"{first}-{last}")],
                body=piece,
            )
        )
        try:
            response = await asyncio.shield(request)
        except asyncio.CancelledError:
            await self._settle(request)  # the piece is in memory: let it finish
            raise
        if response.status != 202:
            raise self._error(response)
        self._location = next_location(response, self._subject)
        end = _range_end(response)
        if end is not None and end != last:
            raise ProtocolError(
                f"{self._subject}: registry has bytes 0-{end} after a chunk ending at {last}"
            )
        self._acked = last + 1

    async def commit(self, digest: str | None = None) -> Descriptor:
        """Finish the upload as ``digest`` (default: the digest computed while sending).

        Raises :class:`DigestMismatchError` *before* the ``PUT`` when ``digest`` is not the
        digest of the bytes sent. Returns the blob's descriptor (media type octet-stream: the
        caller knows what the blob is).
        """
        location = self._check_open()
        try:
            if self._buffer:
                piece = bytes(self._buffer)
                self._buffer.clear()
                await self._patch_chunk(piece)
                location = self._check_open()
            actual = self.digest
            expected = actual if digest is None else digest
            parse_digest(expected)
            if expected != actual:
                raise DigestMismatchError(self._subject, expected=expected, actual=actual)
            response = await self._send(
                "PUT",
                with_digest(location, expected),
                headers=[("Content-Type", OCTET_STREAM)],
                body=b"",
            )
            if response.status not in {201, 204}:
                raise self._error(response)
            announced = response.header("Docker-Content-Digest")
            if announced and announced != expected:
                raise DigestMismatchError(
                    f"{self._subject} (as the registry stored it)", expected=expected,
                    actual=announced,
                )  # fmt: skip
        except BaseException:
            if self._state == "open":
                await self.cancel()
            raise
        self._state = "committed"
        return Descriptor(OCTET_STREAM, expected, self._read)

    def _error(self, response: Response) -> RegistryError:
        return error_from_response(
            self._subject,
            status=response.status,
            body=response.body,
            retry_after=response.header("Retry-After"),
        )


T = TypeVar("T")


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await `work` in its own task; a cancellation meanwhile waits for it, then propagates
    (`work` is bounded in time by its own timeout)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        raise
