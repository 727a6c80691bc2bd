"""The one place that talks HTTP: send a request with aiohttp, follow redirects, map every failure.

Decision: all aiohttp, ssl and socket exceptions are translated into :mod:`.errors` here, in
:meth:`Transport.send`, and nowhere else, so no ``aiohttp.ClientError`` escapes the package and
every message is built from values known to be safe (method, URL without query, host, reason).
Redirects are followed here by hand, not by aiohttp, so the rule "never send ``Authorization``
to another host" is ours, visible and tested, whatever aiohttp version is installed. A body is
either the bytes held in the request, or a stream sent beside it exactly once (aiohttp sends it
with ``Transfer-Encoding: chunked`` unless the request says ``Content-Length``); requests with a
body are never redirected.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import replace
from typing import Final

import aiohttp
import yarl

from containerdisks.oci.errors import (
    BlobSizeError,
    CertificateError,
    ConnectError,
    ConnectionLostError,
    ContentTooLargeError,
    OCIError,
    ProtocolError,
    TLSError,
    TransportError,
    TransportTimeoutError,
    one_line,
)
from containerdisks.oci.messages import Request, Response, safe_url

__all__ = ["ERROR_BODY_LIMIT", "Transport", "make_ssl"]

#: Receives a streamed response body, chunk by chunk (backpressure: it is awaited).
Sink = Callable[[bytes], Awaitable[None]]

logger = logging.getLogger("containerdisks.oci")

#: At most this much of an error response's body is read (enough for any JSON error document).
ERROR_BODY_LIMIT: Final = 64 * 1024
#: Redirect hops followed for one request.
MAX_REDIRECTS: Final = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_READ_BUFSIZE: Final = 1 << 20


def make_ssl(
    *, insecure_skip_tls: bool, ca_file: str | os.PathLike[str] | None
) -> ssl.SSLContext | bool:
    """The ``ssl`` argument for aiohttp: verification off, system CAs, or system CAs + a CA file.

    The CA file is read now, so a missing or unreadable one fails at construction, not mid-run.
    """
    if insecure_skip_tls:
        return False
    if ca_file is None:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=os.fspath(ca_file))
    return context


def _reason(error: BaseException | None) -> str:
    """A short, secret-free description of a low-level error."""
    if error is None:
        return "unknown error"
    if isinstance(error, ssl.SSLCertVerificationError):
        return error.verify_message or error.reason or "certificate verify failed"
    if isinstance(error, ssl.SSLError):
        return error.reason or error.strerror or type(error).__name__
    if (
        isinstance(error, OSError)
        and isinstance(error.errno, int)
        and error.errno in errno.errorcode
    ):
        return os.strerror(error.errno)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    return one_line(text, 160) if text else type(error).__name__


def _map_error(exc: BaseException, request: Request, url: yarl.URL) -> OCIError:
    """Translate an aiohttp/ssl/socket/timeout exception into one of ours."""
    where = f"{request.method} {safe_url(url)}"
    host = url.host or ""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return CertificateError(
            f"{where}: TLS certificate verification failed: {_reason(exc.certificate_error)}",
            host=host,
        )
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return TLSError(f"{where}: TLS handshake failed: {_reason(exc.os_error)}", host=host)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ConnectError(f"{where}: cannot resolve host: {_reason(exc.os_error)}", host=host)
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        closed = isinstance(cause, ConnectionResetError | ConnectionAbortedError | ssl.SSLEOFError)
        if closed and url.scheme == "https":
            return TLSError(
                f"{where}: connection closed during TLS handshake: {_reason(cause)}", host=host
            )
        return ConnectError(f"{where}: cannot connect: {_reason(cause)}", host=host)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportTimeoutError(f"{where}: timed out connecting", host=host)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return TransportTimeoutError(f"{where}: timed out reading the response", host=host)
    if isinstance(exc, TimeoutError):
        return TransportTimeoutError(f"{where}: timed out", host=host)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ConnectionLostError(f"{where}: server closed the connection", host=host)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ConnectionLostError(f"{where}: response body cut short", host=host)
    if isinstance(exc, aiohttp.InvalidURL):
        return ProtocolError(f"{where}: invalid URL")
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProtocolError(f"{where}: invalid HTTP response (status {exc.status})")
    if isinstance(exc, aiohttp.ClientOSError):
        return ConnectionLostError(f"{where}: connection failed: {_reason(exc)}", host=host)
    if isinstance(exc, aiohttp.ClientConnectionError):
        # e.g. sending a streamed body failed; its text may quote the body's own exception
        return ConnectionLostError(f"{where}: sending the request failed", host=host)
    return TransportError(f"{where}: {type(exc).__name__}", host=host)


class Transport:
    """Sends :class:`Request` values and returns fully read :class:`Response` values.

    Owns the aiohttp session unless one is passed in (then the caller closes it).
    """

    def __init__(
        self,
        *,
        ssl: ssl.SSLContext | bool = True,
        timeout: aiohttp.ClientTimeout,
        user_agent: str,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._ssl = ssl
        self._timeout = timeout
        self._user_agent = user_agent
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"<Transport ssl={'custom' if isinstance(self._ssl, ssl.SSLContext) else self._ssl}>"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                read_bufsize=_READ_BUFSIZE,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def send(
        self,
        request: Request,
        *,
        max_body: int,
        stream: AsyncIterable[bytes] | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
        sink: Sink | None = None,
        length: int | None = None,
    ) -> Response:
        """Send ``request``, following redirects for GET and HEAD, and read the body.

        With a ``sink``, a successful (2xx) body is handed to it chunk by chunk instead of being
        held in memory (no ``max_body`` limit then; the sink bounds it); the response's body is
        empty. ``length``: the size the sink expects; a ``Content-Length`` that differs raises
        :class:`BlobSizeError` before the first byte is read.

        A success body larger than ``max_body`` raises :class:`ContentTooLargeError`; an error
        body is cut at :data:`ERROR_BODY_LIMIT`. ``Authorization`` is dropped when a redirect
        leaves the original origin (scheme, host and port). ``stream`` is sent as the body
        instead of ``request.body``; ``client_timeout`` replaces the transport's for this request.
        """
        session = self._get_session()
        current = request
        data: AsyncIterable[bytes] | bytes | None = stream if stream is not None else request.body
        for _ in range(MAX_REDIRECTS + 1):
            url = current.url
            headers = {"User-Agent": self._user_agent, **dict(current.headers)}
            try:
                async with session.request(
                    current.method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    ssl=self._ssl,
                    timeout=client_timeout if client_timeout is not None else self._timeout,
                ) as resp:
                    logger.debug("%s %s -> %d", current.method, safe_url(url), resp.status)
                    if (
                        resp.status in _REDIRECTS
                        and current.method in {"GET", "HEAD"}
                        and data is None
                    ):
                        current = self._redirect(current, resp)
                        continue
                    if sink is not None and 200 <= resp.status < 300:
                        announced = resp.content_length
                        if length is not None and announced is not None and announced != length:
                            raise BlobSizeError(
                                f"{current.method} {safe_url(resp.url)}: Content-Length "
                                f"{announced}, the descriptor says {length} bytes"
                            )
                        # iter_any: what has arrived, as it is (iter_chunked would copy
                        # to re-cut it into fixed sizes).
                        async for chunk in resp.content.iter_any():
                            await sink(chunk)
                        body = b""
                    else:
                        body = await self._read(current, resp, max_body)
                    return Response.build(resp.status, resp.url, resp.headers.items(), body)
            except OCIError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _map_error(exc, current, url) from None
        raise ProtocolError(
            f"{request.method} {safe_url(request.url)}: more than {MAX_REDIRECTS} redirects"
        )

    @staticmethod
    def _redirect(current: Request, resp: aiohttp.ClientResponse) -> Request:
        location = resp.headers.get("Location")
        if not location:
            raise ProtocolError(
                f"{current.method} {safe_url(current.url)}: redirect {resp.status} without Location"
            )
        # encoded=True: a str would be re-quoted and break signed query strings.
        target = resp.url.join(yarl.URL(location, encoded=True))
        if target.scheme not in {"http", "https"}:
            raise ProtocolError(
                f"{current.method} {safe_url(current.url)}: redirect to a non-HTTP URL"
            )
        following = replace(current, url=target)
        if target.origin() != current.url.origin():
            following = following.without_header("Authorization")
        return following

    @staticmethod
    async def _read(request: Request, resp: aiohttp.ClientResponse, max_body: int) -> bytes:
        if request.method == "HEAD":
            return b""
        is_error = resp.status >= 300
        limit = ERROR_BODY_LIMIT if is_error else max_body
        length = resp.content_length
        if not is_error and length is not None and length > limit:
            raise ContentTooLargeError(
                f"{request.method} {safe_url(resp.url)}: {length} bytes, more than the "
                f"{limit} allowed"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_READ_BUFSIZE):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if is_error:
                    break
                raise ContentTooLargeError(
                    f"{request.method} {safe_url(resp.url)}: more than the {limit} bytes allowed"
                )
        return b"".join(chunks)[:limit]
