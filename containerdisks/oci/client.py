"""RegistryClient: the registry API operations, for one registry, over one transport.

Decision: a client is bound to one registry host, because everything decided per host lives
here and is learned once: the scheme (HTTPS first; plain HTTP only for the local/private hosts of
:func:`.reference.http_fallback_allowed`, or any host with ``insecure_skip_tls``, and only when the
server refuses TLS, never after a certificate failure), the auth challenge, the tokens, and
whether uploads must go in chunks. The first request pings ``/v2/`` to decide the first two, as
go-containerregistry does; reads and writes share them. Everything read is verified against its
digest before it is returned; everything written is checked against the digest the registry
announces back. Credentials go only to the registry's own origin: a ``Location`` or redirect on
another host is reached without them.

Writes, in the order a push uses them (go-containerregistry ``remote/write.go``): :meth:`has_blob`
(HEAD), :meth:`mount_blob` (``POST ?mount=&from=``), :meth:`blob_upload` (a streamed upload
session, :mod:`.upload`) or :meth:`put_blob` (small blobs, one PUT), then :meth:`put_manifest`
for each platform manifest by digest, then the index by tag. :meth:`delete_manifest` removes
a manifest by digest (retention).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Final, Self

import aiohttp
import yarl

from containerdisks.oci.auth import (
    Authenticator,
    AuthFlow,
    Credentials,
    TokenCache,
    delete_scope,
    merge_scopes,
    pull_scope,
    push_scope,
    select_challenge,
)
from containerdisks.oci.digest import (
    Hashing,
    compute_digest,
    is_digest,
    parse_digest,
    verify_digest,
)
from containerdisks.oci.errors import (
    BlobSizeError,
    BlobUnknownError,
    CertificateError,
    DeniedError,
    DigestMismatchError,
    InvalidManifestError,
    InvalidReferenceError,
    ManifestUnknownError,
    OCIError,
    ProtocolError,
    RegistryError,
    RepositoryUnknownError,
    TLSError,
    TransferTooSlowError,
    error_from_response,
    one_line,
)
from containerdisks.oci.media import (
    ACCEPT_MANIFESTS,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    Manifest,
    detect_media_type,
    parse_json_object,
)
from containerdisks.oci.messages import Purpose, Request, Response
from containerdisks.oci.reference import (
    api_host,
    http_fallback_allowed,
    parse_registry,
    validate_repository,
    validate_tag,
)
from containerdisks.oci.transport import ERROR_BODY_LIMIT, Sink, Transport, make_ssl
from containerdisks.oci.upload import (
    OCTET_STREAM,
    BlobUpload,
    default_chunk_size,
    next_location,
    with_digest,
)

__all__ = ["DEFAULT_USER_AGENT", "RegistryClient"]

logger = logging.getLogger("containerdisks.oci")

DEFAULT_USER_AGENT: Final = "containerdisks-oci"
#: Registries SHOULD accept manifests of at least 4 MB; we read no bigger ones.
DEFAULT_MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
_TOKEN_BODY_LIMIT: Final = 1024 * 1024
#: Chunk size for registries that refused one streamed PATCH (GHCR's limit; ACR takes it too).
FALLBACK_CHUNK_SIZE: Final = 4 * 1024 * 1024
#: Pages of a tag list followed at most (a registry whose ``Link`` never ends is broken).
_MAX_TAG_PAGES: Final = 10_000
_HASH_BATCH: Final = 8 << 20  # bytes of a blob hashed per thread hop in read_blob


def _as_credentials(value: Credentials | tuple[str, str] | None) -> Credentials | None:
    if value is None or isinstance(value, Credentials):
        return value
    username, password = value
    return Credentials(username, password)


class RegistryClient:
    """An async client for one OCI registry: manifests, blobs and tags; read and write.

    Use as ``async with RegistryClient("quay.io") as client: ...``. ``registry`` is a host with
    an optional port (``127.0.0.1:5000``, ``[::1]:5000``); ``docker.io`` is served by
    ``registry-1.docker.io``. Timeouts apply per request: ``connect_timeout`` to open a
    connection, ``read_timeout`` between two reads, ``request_timeout`` for the whole exchange;
    a PATCH that carries a blob is bounded by ``upload_timeout`` instead (None: no bound), a
    streamed blob read (:meth:`read_blob`) by ``blob_deadline`` instead, and it fails when a
    window of ``blob_rate_window`` seconds brings fewer than ``blob_min_rate`` bytes per second
    (0: no rate check).
    ``chunk_size``: None sends each blob as one streamed PATCH (except to registries known to
    need chunks, :data:`.upload.CHUNKED_UPLOAD_HOSTS`); a number sends PATCHes of that many
    bytes (raised to the registry's ``OCI-Chunk-Min-Length``). ``credentials``: a
    :class:`Credentials` (e.g. from :func:`.credentials.find_credentials`), a ``(user,
    password)`` pair, or None for anonymous; they go to this registry's origin and its token
    service only. ``insecure_skip_tls`` also lets an ``https`` registry name a token service on
    plain ``http`` (refused otherwise).
    """

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | tuple[str, str] | None = None,
        insecure_skip_tls: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        request_timeout: float = 120.0,
        max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE,
        user_agent: str = DEFAULT_USER_AGENT,
        token_cache: TokenCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        chunk_size: int | None = None,
        upload_timeout: float | None = None,
        blob_min_rate: int = 0,
        blob_rate_window: float = 60.0,
        blob_deadline: float | None = None,
    ) -> None:
        parsed = parse_registry(registry)
        if parsed.namespace:
            raise InvalidReferenceError(
                registry, "expected a registry host such as quay.io or 127.0.0.1:5000"
            )
        self.host = parsed.host
        self.api_host = api_host(parsed.host)
        self._insecure = insecure_skip_tls
        self._max_manifest_size = max_manifest_size
        self._auth = Authenticator(
            self.api_host,
            _as_credentials(credentials),
            tokens=token_cache,
            clock=clock,
            allow_http_realm=insecure_skip_tls,
        )
        self._transport = Transport(
            ssl=make_ssl(insecure_skip_tls=insecure_skip_tls, ca_file=ca_file),
            timeout=aiohttp.ClientTimeout(
                total=request_timeout, connect=connect_timeout, sock_read=read_timeout
            ),
            user_agent=user_agent,
            session=session,
        )
        self._upload_timeout = aiohttp.ClientTimeout(
            total=upload_timeout, connect=connect_timeout, sock_read=read_timeout
        )
        self._blob_timeout = aiohttp.ClientTimeout(
            total=blob_deadline, connect=connect_timeout, sock_read=read_timeout
        )
        self._blob_min_rate = blob_min_rate
        self._blob_rate_window = blob_rate_window
        self._blob_deadline = blob_deadline
        self._clock = clock
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, not {chunk_size}")
        self._chunk_size = chunk_size if chunk_size is not None else default_chunk_size(self.host)
        self._schemes: dict[str, str] = {}
        self._scheme_lock = asyncio.Lock()
        self._token_locks: dict[frozenset[str], asyncio.Lock] = {}

    def use_credentials(self, credentials: Credentials | tuple[str, str] | None) -> bool:
        """Send ``credentials`` from the next request on, e.g. after a mounted Secret rotated;
        tokens fetched with the old ones are dropped. Returns whether they differ."""
        return self._auth.use_credentials(_as_credentials(credentials))

    def __repr__(self) -> str:
        scheme = self._schemes.get(self.api_host, "undecided")
        return f"<RegistryClient {self.host} scheme={scheme}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session if the client created it."""
        await self._transport.close()

    @property
    def scheme(self) -> str | None:
        """``https`` or ``http`` once decided by the first request, else None."""
        return self._schemes.get(self.api_host)

    # -- plumbing ---------------------------------------------------------------------------

    async def _base_url(self) -> yarl.URL:
        """The registry's base URL, deciding the scheme with a ``GET /v2/`` ping the first time."""
        host = self.api_host
        scheme = self._schemes.get(host)
        if scheme is None:
            async with self._scheme_lock:
                scheme = self._schemes.get(host)
                if scheme is None:
                    scheme = await self._ping(host)
                    self._schemes[host] = scheme
        return yarl.URL(f"{scheme}://{host}/")

    async def _ping(self, host: str) -> str:
        """Try ``https`` then, where allowed, ``http``; learn the auth challenge on the way."""
        try:
            response = await self._transport.send(
                Request("GET", yarl.URL(f"https://{host}/v2/")), max_body=ERROR_BODY_LIMIT
            )
            scheme = "https"
        except CertificateError:
            raise
        except TLSError as exc:
            if not (self._insecure or http_fallback_allowed(host)):
                raise
            logger.debug("%s refused TLS (%s); using plain HTTP", host, exc)
            response = await self._transport.send(
                Request("GET", yarl.URL(f"http://{host}/v2/")), max_body=ERROR_BODY_LIMIT
            )
            scheme = "http"
        self._auth.observe(response)
        return scheme

    async def _url(
        self, repository: str, path: str, query: Iterable[tuple[str, str]] = ()
    ) -> yarl.URL:
        base = await self._base_url()
        url = base.with_path(f"/v2/{repository}/{path}")
        query = list(query)
        return url.with_query(query) if query else url

    async def _send(
        self,
        method: str,
        repository: str,
        path: str,
        *,
        max_body: int,
        accept: str | None = None,
        query: Iterable[tuple[str, str]] = (),
        scopes: Sequence[str] | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        sink: Sink | None = None,
        length: int | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Response:
        """One authenticated request to ``/v2/<repository>/<path>`` (pull scope by default)."""
        url = await self._url(repository, path, query)
        all_headers = list(headers)
        if accept is not None:
            all_headers.append(("Accept", accept))
        return await self._request(
            method,
            url,
            scopes=scopes if scopes is not None else (pull_scope(repository),),
            headers=all_headers,
            body=body,
            max_body=max_body,
            sink=sink,
            length=length,
            client_timeout=client_timeout,
        )

    async def _request(
        self,
        method: str,
        url: yarl.URL,
        *,
        scopes: Sequence[str],
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        stream: AsyncIterable[bytes] | None = None,
        max_body: int = ERROR_BODY_LIMIT,
        sink: Sink | None = None,
        length: int | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Response:
        """One request, authenticated for ``scopes`` when it goes to the registry's origin.

        A URL on another origin (an upload ``Location`` may point at a storage front) is sent
        without credentials. A ``stream`` body is sent once: a 401 to it is final.
        """
        request = Request(method, url, tuple(headers), body=body)
        timeout = self._upload_timeout if stream is not None else client_timeout
        base = await self._base_url()
        if not _same_origin(url, base):
            return await self._transport.send(
                request,
                max_body=max_body,
                stream=stream,
                client_timeout=timeout,
                sink=sink,
                length=length,
            )
        if self._auth.needs_token(scopes):
            # one token fetch per scope set, however many requests wait for it
            lock = self._token_locks.setdefault(frozenset(scopes), asyncio.Lock())
            async with lock:
                if self._auth.needs_token(scopes):
                    await self._drive(self._auth.token_flow(scopes), max_body)
        final = await self._drive(
            self._auth.flow(request, scopes),
            max_body,
            stream=stream,
            client_timeout=timeout,
            sink=sink,
            length=length,
        )
        assert final is not None
        return final

    async def _drive(
        self,
        flow: AuthFlow,
        max_body: int,
        *,
        stream: AsyncIterable[bytes] | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
        sink: Sink | None = None,
        length: int | None = None,
    ) -> Response | None:
        """Run an auth flow: send what it yields, feed back the answers; the last registry
        response (None if the flow sent only token requests). With a ``stream``, the first
        registry request carries it and the flow gets no second try."""
        final: Response | None = None
        try:
            outgoing = next(flow)
        except StopIteration:
            return final
        while True:
            is_token = outgoing.purpose is Purpose.TOKEN
            if is_token:
                response = await self._transport.send(outgoing, max_body=_TOKEN_BODY_LIMIT)
            elif stream is not None and final is not None:
                flow.close()  # the body is gone: the 401 it got is the answer
                return final
            else:
                response = await self._transport.send(
                    outgoing,
                    max_body=max_body,
                    stream=stream,
                    client_timeout=client_timeout,
                    sink=sink,
                    length=length,
                )
                final = response
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return final

    def _error(
        self,
        subject: str,
        response: Response,
        *,
        not_found: type[RegistryError] = RegistryError,
    ) -> RegistryError:
        """The error for a failed registry response; a token lacking a scope says so."""
        error = error_from_response(
            subject,
            status=response.status,
            body=response.body,
            retry_after=response.header("Retry-After"),
            not_found=not_found,
        )
        if response.status in {401, 403} and not error.message:
            # a HEAD has no body to say why
            text = "authentication required" if response.status == 401 else "access denied"
            if self._auth.anonymous:
                text += " (no credentials given)"
            error = type(error)(
                subject, status=response.status, code=error.code, message=text,
                retry_after=error.retry_after,
            )  # fmt: skip
        if response.status != 401:
            return error
        challenge = select_challenge(response.header_all("WWW-Authenticate"))
        if challenge is None or challenge.params.get("error") != "insufficient_scope":
            return error
        scope = " ".join(merge_scopes(challenge.scopes))  # distribution's order varies
        who = "anonymous" if self._auth.anonymous else "these credentials"
        message = f"{error.message}; " if error.message else ""
        return DeniedError(
            subject,
            status=401,
            code=error.code,
            message=one_line(f"{message}token service granted {who} less than {scope}"),
        )

    def _subject(self, what: str, repository: str, reference: str) -> str:
        sep = "@" if ":" in reference else ":"
        return f"{what} {self.host}/{repository}{sep}{reference}"

    @staticmethod
    def _check_reference(reference: str) -> None:
        if ":" in reference:
            parse_digest(reference)
        else:
            validate_tag(reference)

    async def _manifest_error(self, response: Response, repository: str, subject: str) -> Exception:
        """The error for a failed manifest request, telling an unknown repository apart.

        distribution answers ``MANIFEST_UNKNOWN`` for a tag in a repository that does not exist;
        one extra ``tags/list`` request (only on this failure path) tells the two apart.
        """
        error = error_from_response(
            subject,
            status=response.status,
            body=response.body,
            retry_after=response.header("Retry-After"),
            not_found=ManifestUnknownError,
        )
        maybe_repository = error.code in {"", "MANIFEST_UNKNOWN"}
        if not isinstance(error, ManifestUnknownError) or not maybe_repository:
            return error
        try:
            probe = await self._send(
                "GET", repository, "tags/list", max_body=ERROR_BODY_LIMIT, query=[("n", "1")]
            )
        except OCIError:  # the probe is only a hint; the original error stands
            return error
        if probe.status == 404:
            unknown = error_from_response(
                f"repository {self.host}/{repository}",
                status=probe.status,
                body=probe.body,
                not_found=RepositoryUnknownError,
            )
            if isinstance(unknown, RepositoryUnknownError):
                return RepositoryUnknownError(
                    subject,
                    status=404,
                    code=unknown.code or "NAME_UNKNOWN",
                    message="repository name not known to registry",
                )
        return error

    # -- public API -------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        """Fetch a manifest or index by tag or digest, verified against its digest.

        By digest, the bytes must hash to it; by tag, to ``Docker-Content-Digest`` when the
        registry sends one. Raises :class:`RepositoryUnknownError` or
        :class:`ManifestUnknownError` (both :class:`NotFoundError`) when it does not exist.
        """
        validate_repository(repository)
        self._check_reference(reference)
        subject = self._subject("manifest", repository, reference)
        response = await self._send(
            "GET",
            repository,
            f"manifests/{reference}",
            max_body=self._max_manifest_size,
            accept=ACCEPT_MANIFESTS,
        )
        if response.status != 200:
            raise await self._manifest_error(response, repository, subject)
        data = response.body
        announced = response.header("Docker-Content-Digest")
        if is_digest(reference):
            verify_digest(data, reference, subject=subject)
            if announced is not None and announced != reference and is_digest(announced):
                raise DigestMismatchError(subject, expected=reference, actual=announced)
            digest = reference
        elif announced is not None and is_digest(announced):
            verify_digest(data, announced, subject=subject)
            digest = announced
        else:
            digest = compute_digest(data)
        media_type = detect_media_type(data, response.header("Content-Type"), subject)
        return Manifest(media_type, data, digest)

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The descriptor a tag or digest points at, or None when it does not exist.

        One HEAD request; falls back to a GET when the registry leaves out the digest or the
        media type. A HEAD has no body, so an unknown repository is also just None.
        """
        validate_repository(repository)
        self._check_reference(reference)
        subject = self._subject("manifest", repository, reference)
        response = await self._send(
            "HEAD", repository, f"manifests/{reference}", max_body=0, accept=ACCEPT_MANIFESTS
        )
        if response.status == 404:
            return None
        if response.status != 200:
            raise self._error(subject, response, not_found=ManifestUnknownError)
        digest = response.header("Docker-Content-Digest")
        media_type = (response.header("Content-Type") or "").split(";", 1)[0].strip()
        length = response.header("Content-Length")
        if (
            digest is None
            or not is_digest(digest)
            or media_type not in MANIFEST_MEDIA_TYPES
            or length is None
            or not length.isdigit()
        ):
            try:
                return (await self.get_manifest(repository, reference)).descriptor()
            except ManifestUnknownError:
                return None
        if is_digest(reference) and digest != reference:
            raise DigestMismatchError(subject, expected=reference, actual=digest)
        return Descriptor(media_type, digest, int(length))

    async def get_blob(self, repository: str, digest: str, *, max_size: int) -> bytes:
        """A small blob (a config), read whole and verified against ``digest``.

        More than ``max_size`` bytes raises :class:`ContentTooLargeError` before reading them.
        """
        validate_repository(repository)
        parse_digest(digest)
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        subject = self._subject("blob", repository, digest)
        response = await self._send("GET", repository, f"blobs/{digest}", max_body=max_size)
        if response.status != 200:
            raise self._error(subject, response, not_found=BlobUnknownError)
        verify_digest(response.body, digest, subject=subject)
        return response.body

    async def read_blob(self, repository: str, digest: str, sink: Sink, *, size: int) -> int:
        """Stream a blob of ``size`` bytes (its descriptor's) into ``sink``, verified against
        ``digest``; its size.

        The digest is checked when the stream ends: a mismatch raises
        :class:`DigestMismatchError` after ``sink`` has seen the bytes, so a consumer must not
        commit what it received before this returns. A body that is not ``size`` bytes raises
        :class:`BlobSizeError`: a ``Content-Length`` that differs before any byte is read, a
        longer body as soon as the first byte too many arrives (the sink never sees it), a
        shorter one when it ends. Too slow a body raises :class:`TransferTooSlowError` (see
        the constructor's ``blob_*`` arguments).
        """
        validate_repository(repository)
        algorithm, _ = parse_digest(digest)
        subject = self._subject("blob", repository, digest)
        hasher = hashlib.new(algorithm)
        expected = size
        size = 0
        floor = _RateFloor(
            self._blob_min_rate, self._blob_rate_window, self._blob_deadline, self._clock()
        )
        # One batch hashes in a thread while the sink takes the next chunks and the socket is
        # read; big batches keep the thread hops (and the event loop's share of the CPU) small.
        hashing = Hashing(hasher, batch=_HASH_BATCH)

        async def counted(chunk: bytes) -> None:
            nonlocal size
            if size + len(chunk) > expected:
                raise BlobSizeError(f"{subject}: more than the {expected} bytes of its descriptor")
            slow = floor.record(self._clock(), len(chunk))
            if slow is not None:
                raise TransferTooSlowError(f"{subject}: {slow}", host=self.host)
            size += len(chunk)
            if hashing.feed(chunk):
                await hashing.flush()
            await sink(chunk)

        try:
            response = await self._send(
                "GET",
                repository,
                f"blobs/{digest}",
                max_body=ERROR_BODY_LIMIT,
                sink=counted,
                length=expected,
                client_timeout=self._blob_timeout,
            )
            await hashing.finish()
        finally:
            await hashing.settle()
        if response.status != 200:
            raise self._error(subject, response, not_found=BlobUnknownError)
        if size != expected:
            raise BlobSizeError(f"{subject}: {size} bytes, its descriptor says {expected}")
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest:
            raise DigestMismatchError(subject, expected=digest, actual=actual)
        return size

    # -- write side -------------------------------------------------------------------------

    async def has_blob(self, repository: str, digest: str) -> bool:
        """Whether ``repository`` has the blob (one HEAD; a blob in another repository of the
        same registry does not count: :meth:`mount_blob` it)."""
        validate_repository(repository)
        parse_digest(digest)
        response = await self._send("HEAD", repository, f"blobs/{digest}", max_body=0)
        if response.status == 200:
            return True
        if response.status == 404:
            return False
        raise self._error(self._subject("blob", repository, digest), response)

    async def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Make the blob of ``from_repository`` (same registry) part of ``repository``.

        True when the registry mounted it (201). False when it did not: a 202 (it opened an
        upload instead, which is cancelled at once) or any error, which is only logged: a
        refused mount is no failure, the caller uploads instead. One token covers both
        repositories (``pull,push`` on the target, ``pull`` on the source).
        """
        validate_repository(repository)
        validate_repository(from_repository)
        parse_digest(digest)
        subject = self._subject("blob", repository, digest)
        try:
            response = await self._send(
                "POST",
                repository,
                "blobs/uploads/",
                max_body=ERROR_BODY_LIMIT,
                query=[("mount", digest), ("from", from_repository)],
                scopes=(push_scope(repository), pull_scope(from_repository)),
            )
            if response.status == 201:
                logger.debug("%s: mounted from %s", subject, from_repository)
                return True
            if response.status == 202:
                location = next_location(response, subject)
                await self._cancel_upload(repository, location, subject)
            else:
                logger.debug(
                    "%s: mount from %s refused: %s",
                    subject,
                    from_repository,
                    self._error(subject, response),
                )
        except OCIError as exc:
            logger.debug("%s: mount from %s failed: %s", subject, from_repository, exc)
        return False

    async def _cancel_upload(self, repository: str, location: yarl.URL, subject: str) -> None:
        try:
            response = await self._request("DELETE", location, scopes=(push_scope(repository),))
            logger.debug("%s: upload cancelled (HTTP %d)", subject, response.status)
        except OCIError as exc:
            logger.debug("%s: cancelling the upload failed: %s", subject, exc)

    async def _start_upload(self, repository: str) -> tuple[yarl.URL, int]:
        """``POST /blobs/uploads/``: the upload's Location and ``OCI-Chunk-Min-Length`` (or 0)."""
        subject = f"blob upload {self.host}/{repository}"
        response = await self._send(
            "POST",
            repository,
            "blobs/uploads/",
            max_body=ERROR_BODY_LIMIT,
            scopes=(push_scope(repository),),
        )
        if response.status != 202:
            raise self._error(subject, response, not_found=RepositoryUnknownError)
        min_length = (response.header("OCI-Chunk-Min-Length") or "").strip()
        return next_location(response, subject), int(min_length) if min_length.isdigit() else 0

    def blob_upload(self, repository: str) -> BlobUpload:
        """A session to stream one blob into ``repository``; use it as an async context manager.

        ::

            async with client.blob_upload(repository) as upload:   # POST
                await upload.write(chunks)                          # PATCH (streamed or chunks)
                descriptor = await upload.commit(digest)            # PUT ?digest=

        Leaving the block without ``commit`` cancels the upload (``DELETE``). See
        :class:`.upload.BlobUpload` for ``sent``, ``size`` and ``digest``.
        """
        validate_repository(repository)
        scopes = (push_scope(repository),)

        def send(
            method: str,
            url: yarl.URL,
            *,
            headers: Sequence[tuple[str, str]] = (),
            body: bytes | None = None,
            stream: AsyncIterable[bytes] | None = None,
        ) -> Awaitable[Response]:
            return self._request(
                method, url, scopes=scopes, headers=headers, body=body, stream=stream
            )

        async def start() -> tuple[yarl.URL, int]:
            return await self._start_upload(repository)

        return BlobUpload(
            send,
            start,
            subject=f"blob upload {self.host}/{repository}",
            chunk_size=self._chunk_size,
            on_stream_refused=self._use_chunks,
        )

    def _use_chunks(self) -> None:
        if self._chunk_size is None:
            logger.info(
                "%s refused a streamed upload; sending blobs in chunks of %d bytes from now on",
                self.host,
                FALLBACK_CHUNK_SIZE,
            )
            self._chunk_size = FALLBACK_CHUNK_SIZE

    async def put_blob(
        self, repository: str, data: bytes, *, media_type: str = OCTET_STREAM
    ) -> Descriptor:
        """Store a small blob (a config) in one request after the POST; skipped when a HEAD
        says it is there. Returns its descriptor with ``media_type``."""
        validate_repository(repository)
        digest = compute_digest(data)
        descriptor = Descriptor(media_type, digest, len(data))
        if await self.has_blob(repository, digest):
            return descriptor
        subject = self._subject("blob", repository, digest)
        location, _ = await self._start_upload(repository)
        try:
            response = await self._request(
                "PUT",
                with_digest(location, digest),
                scopes=(push_scope(repository),),
                headers=[("Content-Type", OCTET_STREAM)],
                body=data,
            )
        except BaseException:
            await self._cancel_upload(repository, location, subject)
            raise
        if response.status not in {201, 204}:
            await self._cancel_upload(repository, location, subject)
            raise self._error(subject, response)
        announced = response.header("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatchError(
                f"{subject} (as the registry stored it)", expected=digest, actual=announced
            )
        return descriptor

    async def put_manifest(
        self, repository: str, reference: str, media_type: str, data: bytes
    ) -> str:
        """Store a manifest or index under a tag or its digest; returns the digest.

        ``data`` is stored as these exact bytes with ``Content-Type: media_type`` (Docker
        schema 2 and OCI types alike). By digest, ``reference`` must be the digest of ``data``
        (checked before sending); the ``Docker-Content-Digest`` the registry answers must be too.
        Push the blobs and, for an index, its manifests (by digest) first, or the registry
        answers ``MANIFEST_BLOB_UNKNOWN``. ``DIGEST_INVALID`` (not about ``data``, whose digest
        is ours) is temporary: another writer of the same repository was mid-write.
        """
        validate_repository(repository)
        self._check_reference(reference)
        subject = self._subject("manifest", repository, reference)
        if is_digest(reference):
            algorithm, _ = parse_digest(reference)
            digest = compute_digest(data, algorithm)
            if digest != reference:
                raise DigestMismatchError(subject, expected=reference, actual=digest)
        else:
            digest = compute_digest(data)
        declared = parse_json_object(data, subject).get("mediaType")
        if isinstance(declared, str) and declared and declared != media_type:
            raise InvalidManifestError(
                f"{subject}: mediaType {declared} in the document, {media_type} given"
            )
        response = await self._send(
            "PUT",
            repository,
            f"manifests/{reference}",
            max_body=ERROR_BODY_LIMIT,
            scopes=(push_scope(repository),),
            headers=[("Content-Type", media_type)],
            body=data,
        )
        if not 200 <= response.status < 300:
            error = self._error(subject, response)
            if error.code == "DIGEST_INVALID":
                # `digest` was computed from `data` here, so the digest the registry finds
                # wrong is one it read from its own storage: distribution's filesystem driver
                # rewrites a link file in place (truncate, then write), and a check of a
                # referenced manifest or blob made while another client writes the same link
                # reads it empty. The next try reads it whole.
                error.temporary = True
            raise error
        announced = response.header("Docker-Content-Digest")
        if announced and is_digest(announced) and announced != digest:
            raise DigestMismatchError(
                f"{subject} (as the registry stored it)", expected=digest, actual=announced
            )
        return digest

    async def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete the manifest ``digest`` from ``repository``: ``DELETE /manifests/<digest>``.

        By digest only: deleting by tag is optional in the distribution spec and distribution
        2.8 refuses it. Every tag pointing at the manifest goes with it (distribution untags
        them all), so a caller must only delete digests no tag it keeps points to. Raises
        :class:`UnsupportedError` when the registry does not delete (405 or ``UNSUPPORTED``:
        distribution with ``storage.delete`` off), :class:`ManifestUnknownError` when there is
        no such manifest.
        """
        validate_repository(repository)
        parse_digest(digest)
        subject = self._subject("manifest", repository, digest)
        response = await self._send(
            "DELETE",
            repository,
            f"manifests/{digest}",
            max_body=ERROR_BODY_LIMIT,
            scopes=(delete_scope(repository),),
        )
        if response.status in {200, 202, 204}:
            return
        raise self._error(subject, response, not_found=ManifestUnknownError)

    async def list_tags(self, repository: str, *, page_size: int | None = None) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` pages.

        Raises :class:`RepositoryUnknownError` (a :class:`NotFoundError`) when the repository
        does not exist. ``page_size`` asks for pages of that many tags (``n=``).
        """
        validate_repository(repository)
        subject = f"tags of {self.host}/{repository}"
        query = [("n", str(page_size))] if page_size else []
        url = await self._url(repository, "tags/list", query)
        seen: set[yarl.URL] = set()
        tags: list[str] = []
        for _ in range(_MAX_TAG_PAGES):
            seen.add(url)
            response = await self._request(
                "GET",
                url,
                scopes=(pull_scope(repository),),
                max_body=self._max_manifest_size,
            )
            if response.status != 200:
                raise self._error(subject, response, not_found=RepositoryUnknownError)
            doc = parse_json_object(response.body, subject)
            page = doc.get("tags")
            if page is None:
                page = []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise ProtocolError(f"{subject}: tags is not a list of strings")
            tags.extend(page)
            following = _next_link(response)
            if following is None:
                return tags
            url = following
            if url in seen:
                raise ProtocolError(f"{subject}: Link pagination loops")
        raise ProtocolError(f"{subject}: more than {_MAX_TAG_PAGES} pages")


class _RateFloor:
    """When a blob read is too slow: sans-I/O, told of each chunk as it arrives.

    Time is cut in tumbling windows of ``window`` seconds from ``start``; a window that brought
    fewer than ``min_rate * window`` bytes fails the read at its first chunk after the window
    closed (a body that brings nothing at all is cut by the read timeout instead), and so does
    a chunk after ``deadline``. ``min_rate`` 0 turns the rate check off.
    """

    def __init__(self, min_rate: int, window: float, deadline: float | None, start: float) -> None:
        self._min_rate = min_rate
        self._window = window
        self._window_end = start + window
        self._deadline = deadline
        self._deadline_at = None if deadline is None else start + deadline
        self._in_window = 0

    def record(self, now: float, nbytes: int) -> str | None:
        """Why the read must stop now that ``nbytes`` arrived at ``now``, or None."""
        if self._deadline_at is not None and now >= self._deadline_at:
            return f"not read within the blob deadline ({self._deadline:g} s)"
        if self._min_rate:
            while now >= self._window_end:
                if self._in_window < self._min_rate * self._window:
                    return (
                        f"slower than {self._min_rate} bytes/s over {self._window:g} s "
                        f"({self._in_window} bytes in the last window)"
                    )
                self._in_window = 0
                self._window_end += self._window
        self._in_window += nbytes
        return None


def _same_origin(a: yarl.URL, b: yarl.URL) -> bool:
    """Same scheme, host and (default-aware) port: where credentials may go."""
    return (a.scheme, (a.host or "").lower(), a.port) == (b.scheme, (b.host or "").lower(), b.port)


def _next_link(response: Response) -> yarl.URL | None:
    """The ``rel="next"`` target of the response's ``Link`` headers, resolved and byte-exact."""
    for header in response.header_all("Link"):
        for part in header.split(","):
            target, _, params = part.partition(";")
            target = target.strip()
            if not (target.startswith("<") and target.endswith(">")):
                continue
            rels = [
                p.split("=", 1)[1].strip().strip('"').lower()
                for p in params.split(";")
                if p.strip().lower().startswith("rel=")
            ]
            if any("next" in rel.split() for rel in rels):
                return response.url.join(yarl.URL(target[1:-1], encoded=True))
    return None
