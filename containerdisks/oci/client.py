"""RegistryClient: the registry API operations, for one registry, over one transport.

Decision: a client is bound to one registry host, because everything decided per host lives
here and is learned once: the scheme (HTTPS first; plain HTTP only for the local/private hosts of
:func:`.reference.http_fallback_allowed`, or any host with ``insecure_skip_tls``, and only when the
server refuses TLS, never after a certificate failure), the auth challenge, and the tokens.
The first request pings ``/v2/`` to decide both, as go-containerregistry does. Everything read is
verified against its digest before it is returned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import yarl

from containerdisks.oci.auth import Authenticator, AuthFlow, Credentials, TokenCache, pull_scope
from containerdisks.oci.digest import compute_digest, is_digest, parse_digest, verify_digest
from containerdisks.oci.errors import (
    BlobUnknownError,
    CertificateError,
    ContentTooLargeError,
    DigestMismatchError,
    InvalidManifestError,
    InvalidReferenceError,
    ManifestUnknownError,
    OCIError,
    PlatformNotFoundError,
    RepositoryUnknownError,
    TLSError,
    error_from_response,
)
from containerdisks.oci.media import (
    ACCEPT_MANIFESTS,
    IMAGE_MANIFEST_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    ImageManifest,
    Manifest,
    Platform,
    detect_media_type,
    parse_image_manifest,
    parse_index,
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
from containerdisks.oci.transport import ERROR_BODY_LIMIT, Transport, make_ssl

__all__ = ["DEFAULT_USER_AGENT", "RegistryClient", "ResolvedImage"]

logger = logging.getLogger("containerdisks.oci")

DEFAULT_USER_AGENT: Final = "containerdisks-oci"
#: Registries SHOULD accept manifests of at least 4 MB; we read no bigger ones.
DEFAULT_MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
#: Image configs are small; a containerdisk's is a few hundred bytes.
DEFAULT_MAX_CONFIG_SIZE: Final = 4 * 1024 * 1024
_TOKEN_BODY_LIMIT: Final = 1024 * 1024


@dataclass(frozen=True)
class ResolvedImage:
    """An image resolved for one platform: from the top-level manifest down to its config."""

    #: What the reference points at: an index/manifest list, or the image manifest itself.
    top: Manifest
    #: The image manifest for the platform (``top`` itself when ``top`` is not an index).
    manifest: Manifest
    #: The platform manifest's config and layer descriptors.
    image: ImageManifest
    #: The config, parsed.
    config: dict[str, Any] = field(repr=False)
    #: The config exactly as stored (its digest is ``image.config.digest``).
    config_bytes: bytes = field(repr=False)

    @property
    def platform(self) -> Platform:
        """The platform the config declares."""
        variant = self.config.get("variant")
        return Platform(
            str(self.config.get("os", "")),
            str(self.config.get("architecture", "")),
            variant if isinstance(variant, str) and variant else None,
        )


def _as_credentials(value: Credentials | tuple[str, str] | None) -> Credentials | None:
    if value is None or isinstance(value, Credentials):
        return value
    username, password = value
    return Credentials(username, password)


class RegistryClient:
    """An async client for one OCI registry (read side: manifests, blobs, platforms).

    Use as ``async with RegistryClient("quay.io") as client: ...``. ``registry`` is a host with
    an optional port (``127.0.0.1:5000``, ``[::1]:5000``); ``docker.io`` is served by
    ``registry-1.docker.io``. Timeouts apply per request: ``connect_timeout`` to open a
    connection, ``read_timeout`` between two reads, ``request_timeout`` for the whole exchange.
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
        max_config_size: int = DEFAULT_MAX_CONFIG_SIZE,
        user_agent: str = DEFAULT_USER_AGENT,
        token_cache: TokenCache | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self._max_config_size = max_config_size
        self._auth = Authenticator(
            self.api_host, _as_credentials(credentials), tokens=token_cache, clock=clock
        )
        self._transport = Transport(
            ssl=make_ssl(insecure_skip_tls=insecure_skip_tls, ca_file=ca_file),
            timeout=aiohttp.ClientTimeout(
                total=request_timeout, connect=connect_timeout, sock_read=read_timeout
            ),
            user_agent=user_agent,
            session=session,
        )
        self._schemes: dict[str, str] = {}
        self._scheme_lock = asyncio.Lock()
        self._token_locks: dict[frozenset[str], asyncio.Lock] = {}

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

    async def _send(
        self,
        method: str,
        repository: str,
        path: str,
        *,
        max_body: int,
        accept: str | None = None,
        query: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """One authenticated registry request for ``repository``: drives the auth flow."""
        base = await self._base_url()
        url = base.with_path(f"/v2/{repository}/{path}")
        if query:
            url = url.with_query(list(query))
        request = Request(method, url)
        if accept is not None:
            request = request.with_header("Accept", accept)
        scopes = (pull_scope(repository),)
        if self._auth.needs_token(scopes):
            # one token fetch per scope set, however many requests wait for it
            lock = self._token_locks.setdefault(frozenset(scopes), asyncio.Lock())
            async with lock:
                if self._auth.needs_token(scopes):
                    await self._drive(self._auth.token_flow(scopes), max_body)
        final = await self._drive(self._auth.flow(request, scopes), max_body)
        assert final is not None
        return final

    async def _drive(self, flow: AuthFlow, max_body: int) -> Response | None:
        """Run an auth flow: send what it yields, feed back the answers; the last registry
        response (None if the flow sent only token requests)."""
        final: Response | None = None
        try:
            outgoing = next(flow)
        except StopIteration:
            return final
        while True:
            is_token = outgoing.purpose is Purpose.TOKEN
            response = await self._transport.send(
                outgoing, max_body=_TOKEN_BODY_LIMIT if is_token else max_body
            )
            if not is_token:
                final = response
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return final

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
            raise error_from_response(
                subject,
                status=response.status,
                body=b"",
                retry_after=response.header("Retry-After"),
                not_found=ManifestUnknownError,
            )
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
            raise error_from_response(
                subject,
                status=response.status,
                body=response.body,
                retry_after=response.header("Retry-After"),
                not_found=BlobUnknownError,
            )
        verify_digest(response.body, digest, subject=subject)
        return response.body

    async def resolve_platform(
        self,
        repository: str,
        reference: str,
        *,
        os: str = "linux",
        architecture: str,
        variant: str | None = None,
    ) -> ResolvedImage:
        """Follow ``reference`` to the image for one platform, and fetch its config.

        An index or manifest list is searched for an entry with this ``os`` and ``architecture``
        (and ``variant`` when given; the first match wins otherwise); a plain manifest must have
        a config for that platform. Raises :class:`PlatformNotFoundError` when there is none.
        """
        wanted = Platform(os, architecture, variant)
        top = await self.get_manifest(repository, reference)
        subject = self._subject("image", repository, reference)
        from_index = top.is_index
        if from_index:
            entries = parse_index(top, subject)
            match = next(
                (
                    entry
                    for entry in entries
                    if entry.platform is not None
                    and entry.media_type in IMAGE_MANIFEST_MEDIA_TYPES
                    and _matches(entry.platform, wanted)
                ),
                None,
            )
            if match is None:
                raise PlatformNotFoundError(
                    subject,
                    wanted=str(wanted),
                    available=[str(e.platform) for e in entries if e.platform is not None],
                )
            manifest = await self.get_manifest(repository, match.digest)
        elif top.media_type in IMAGE_MANIFEST_MEDIA_TYPES:
            manifest = top
        else:
            raise InvalidManifestError(
                f"{subject}: unsupported manifest media type {top.media_type}"
            )
        image = parse_image_manifest(manifest, subject)
        if image.config.size > self._max_config_size:
            raise ContentTooLargeError(
                f"{subject}: config of {image.config.size} bytes, more than the "
                f"{self._max_config_size} allowed"
            )
        config_bytes = await self.get_blob(
            repository, image.config.digest, max_size=image.config.size
        )
        if len(config_bytes) != image.config.size:
            raise InvalidManifestError(
                f"{subject}: config is {len(config_bytes)} bytes, manifest says {image.config.size}"
            )
        config = parse_json_object(config_bytes, f"config of {subject}")
        resolved = ResolvedImage(top, manifest, image, config, config_bytes)
        if not _matches(resolved.platform, wanted):
            if from_index:
                raise InvalidManifestError(
                    f"{subject}: index entry for {wanted} has a config for {resolved.platform}"
                )
            raise PlatformNotFoundError(
                subject, wanted=str(wanted), available=[str(resolved.platform)]
            )
        return resolved


def _matches(have: Platform, wanted: Platform) -> bool:
    if have.os != wanted.os or have.architecture != wanted.architecture:
        return False
    return wanted.variant is None or have.variant == wanted.variant
