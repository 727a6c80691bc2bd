"""Every exception the OCI client raises, in one tree.

Decision: callers act on *kinds* of failure (retry it, treat it as "not published yet", give up
and say why), so each kind is a class and ``temporary`` says whether trying again may help.
Third-party exceptions (aiohttp, ssl, OSError) are translated into these at one boundary,
:meth:`containerdisks.oci.transport.Transport.send`; nothing else escapes the package.
Messages are one line, name the registry, repository and reference involved, and never carry
secrets: no tokens, no ``Authorization`` values, no passwords, no query strings. What a registry
writes into an error body is ours to show, so every message (and a :class:`RegistryError`'s
``message``) is passed through :func:`.redact.redact`: a secret the server echoes is masked.

    OCIError
    ├── InvalidReferenceError          (also a ValueError) a registry/image string does not parse
    ├── CredentialsError               an auth file or credential helper is unusable
    ├── TransportError                 temporary: the HTTP exchange itself failed
    │   ├── ConnectError               refused, unreachable, DNS, reset while connecting
    │   ├── TLSError                   the TLS handshake failed (server speaks plain HTTP, ...)
    │   │   └── CertificateError       not temporary: the certificate did not verify
    │   ├── TransportTimeoutError      connect, read or total time ran out
    │   │   └── TransferTooSlowError   a blob read below its minimum rate or past its deadline
    │   └── ConnectionLostError        the connection broke after the request was sent
    ├── RegistryError                  the registry answered with an error status; temporary
    │   │                              for 408/429/5xx and for a lost upload session
    │   ├── UnauthorizedError          401 / UNAUTHORIZED, or the token service said no
    │   │   └── DeniedError            403 / DENIED, or a token without the scope asked for
    │   ├── UnsupportedError           405 / UNSUPPORTED: the registry does not do this (a
    │   │                              delete, where deletes are disabled)
    │   ├── RepositoryUnknownError     NAME_UNKNOWN                 } also NotFoundError
    │   ├── ManifestUnknownError       MANIFEST_UNKNOWN, Quay's     }
    │   │                              expired tag ("time machine") }
    │   └── BlobUnknownError           BLOB_UNKNOWN                 }
    ├── NotFoundError                  what was asked for does not exist (catch this for "build it")
    │   └── PlatformNotFoundError      the image exists, but not for this os/architecture
    ├── ContentError                   not temporary: the bytes are not what they must be
    │   ├── DigestMismatchError        content does not hash to its digest (read, uploaded,
    │   │                              or announced back by the registry)
    │   ├── InvalidManifestError       unparseable, unsupported or inconsistent manifest/config
    │   ├── ContentTooLargeError       larger than the caller allowed
    │   └── BlobSizeError              a blob body longer or shorter than its descriptor's size
    └── ProtocolError                  the server broke the protocol (redirect loop, bad token,
                                       an upload without Location or with a wrong Range)

A write that fails with a :class:`RegistryError` carries the registry's ``code``
(``MANIFEST_BLOB_UNKNOWN``, ``DIGEST_INVALID``, ``SIZE_INVALID``, ...) for callers that care.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from containerdisks.oci import safejson
from containerdisks.oci.redact import redact

__all__ = [
    "BlobUnknownError",
    "CertificateError",
    "ConnectError",
    "ConnectionLostError",
    "ContentError",
    "ContentTooLargeError",
    "CredentialsError",
    "DeniedError",
    "DigestMismatchError",
    "InvalidManifestError",
    "InvalidReferenceError",
    "ManifestUnknownError",
    "NotFoundError",
    "OCIError",
    "PlatformNotFoundError",
    "ProtocolError",
    "RegistryError",
    "RepositoryUnknownError",
    "TLSError",
    "TransportError",
    "TransportTimeoutError",
    "UnauthorizedError",
    "UnsupportedError",
    "error_from_response",
    "one_line",
    "parse_retry_after",
]

#: Statuses after which the same request may succeed later.
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Codes after which starting over may succeed: the registry forgot an upload session (purged,
#: or served by another replica); a new upload works.
TEMPORARY_CODES = frozenset({"BLOB_UPLOAD_UNKNOWN"})

#: Quay answers a pull of a tag that was deleted or expired with code ``unknown`` and this text.
_QUAY_EXPIRED = "was deleted or has expired"

_MAX_MESSAGE = 300


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """Collapse whitespace (bare ``\\n`` from HAProxy pages included) and cut to ``limit``.

    Secrets are masked first: a cut or a collapsed space must not leave part of one unmasked.
    """
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class OCIError(Exception):
    """Base of every error raised by ``containerdisks.oci``."""

    #: Whether repeating the same operation later may succeed.
    temporary: bool = False

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class InvalidReferenceError(OCIError, ValueError):
    """A registry, repository, tag or digest string does not parse."""

    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"invalid reference {value!r}: {reason}")


class CredentialsError(OCIError):
    """An auth file or credential helper could not be used (unreadable, malformed, failing).

    The message names the file or the helper, never what it holds.
    """


class TransportError(OCIError):
    """The HTTP exchange failed before a complete response arrived."""

    temporary = True

    def __init__(self, message: str, *, host: str) -> None:
        self.host = host
        super().__init__(message)


class ConnectError(TransportError):
    """No connection: refused, unreachable, name not resolved, reset while connecting."""


class TLSError(TransportError):
    """The TLS handshake failed for a reason other than certificate verification.

    Typically the server speaks plain HTTP; only then may a client fall back to ``http://``.
    """


class CertificateError(TLSError):
    """The server's certificate did not verify. Never a reason to fall back to plain HTTP."""

    temporary = False


class TransportTimeoutError(TransportError):
    """Connecting, waiting for the response, or reading it took longer than allowed."""


class TransferTooSlowError(TransportTimeoutError):
    """A blob read brought less than its minimum rate over a window, or ran past its deadline."""


class ConnectionLostError(TransportError):
    """The connection broke after the request was sent (disconnect, truncated body)."""


class RegistryError(OCIError):
    """The registry (or its token service) answered with an error status.

    ``code`` and ``message`` come from the first entry of the ``{"errors": [...]}`` body when
    there is one, else ``code`` is empty and ``message`` is the start of the body as text.
    """

    def __init__(
        self,
        subject: str,
        *,
        status: int,
        code: str = "",
        message: str = "",
        temporary: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.subject = subject
        self.status = status
        self.code = code
        self.message = message = redact(message)
        self.temporary = status in TEMPORARY_STATUSES if temporary is None else temporary
        self.retry_after = retry_after
        parts = [f"HTTP {status}"]
        if code:
            parts.append(code)
        text = " ".join(parts)
        if message:
            text = f"{text}: {message}"
        super().__init__(f"{subject}: {text}")


class NotFoundError(OCIError):
    """What was asked for does not exist: repository, tag, manifest, blob or platform."""


class UnauthorizedError(RegistryError):
    """Authentication failed or is missing (401), here or at the token service."""


class DeniedError(UnauthorizedError):
    """Authenticated, but not allowed (403 / ``DENIED``)."""


class UnsupportedError(RegistryError):
    """The registry refuses the operation as such (405, or code ``UNSUPPORTED``): e.g. a
    manifest delete where deletes are disabled. Not temporary; asking again will not help."""


class RepositoryUnknownError(RegistryError, NotFoundError):
    """The repository does not exist (``NAME_UNKNOWN``)."""


class ManifestUnknownError(RegistryError, NotFoundError):
    """The tag or manifest does not exist (``MANIFEST_UNKNOWN``, or an expired Quay tag)."""


class BlobUnknownError(RegistryError, NotFoundError):
    """The blob does not exist in this repository (``BLOB_UNKNOWN``)."""


class PlatformNotFoundError(NotFoundError):
    """The image exists, but has no manifest for the requested platform."""

    def __init__(self, subject: str, *, wanted: str, available: list[str]) -> None:
        self.subject = subject
        self.wanted = wanted
        self.available = list(available)
        have = ", ".join(self.available) if self.available else "none"
        super().__init__(f"{subject}: no manifest for platform {wanted} (available: {have})")


class ContentError(OCIError):
    """Content that arrived is not what it must be."""


class DigestMismatchError(ContentError):
    """Content does not hash to the digest it was fetched by or announced with."""

    def __init__(self, subject: str, *, expected: str, actual: str) -> None:
        self.subject = subject
        self.expected = expected
        self.actual = actual
        super().__init__(f"{subject}: digest mismatch: expected {expected}, got {actual}")


class InvalidManifestError(ContentError):
    """A manifest, index or config is unparseable, unsupported or inconsistent."""


class ContentTooLargeError(ContentError):
    """The content is larger than the caller allowed."""


class BlobSizeError(ContentError):
    """A blob's body is not the size its descriptor says: announced (``Content-Length``),
    longer (cut as soon as the first byte too many arrives) or shorter."""


class ProtocolError(OCIError):
    """The server broke the protocol: redirect loops, redirects without Location, bad tokens."""

    temporary = False


_CLASS_BY_CODE: dict[str, type[RegistryError]] = {
    "NAME_UNKNOWN": RepositoryUnknownError,
    "MANIFEST_UNKNOWN": ManifestUnknownError,
    "BLOB_UNKNOWN": BlobUnknownError,
    "UNAUTHORIZED": UnauthorizedError,
    "DENIED": DeniedError,
    "UNSUPPORTED": UnsupportedError,
}


def _first_error(body: bytes) -> tuple[str, str] | None:
    """(code, message) of the first entry of an OCI error body, or None if it is not one."""
    try:
        doc: Any = safejson.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    errors = doc.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    first = errors[0]
    code = first.get("code")
    message = first.get("message")
    return (
        code.upper() if isinstance(code, str) else "",
        message if isinstance(message, str) else "",
    )


_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_response(
    subject: str,
    *,
    status: int,
    body: bytes,
    retry_after: str | None = None,
    not_found: type[RegistryError] = RegistryError,
) -> RegistryError:
    """Build the right :class:`RegistryError` for an error response, parsing its body defensively.

    ``not_found`` is the class for a 404 whose body names no known code (e.g. a HEAD, or a
    proxy's HTML page): the caller knows whether it was asking for a manifest or a blob.
    """
    parsed = _first_error(body)
    if parsed is not None:
        code, message = parsed
    else:
        code = ""
        # masked before it is cut or its non-ASCII letters blanked: no half secret is left
        message = _PRINTABLE.sub(" ", redact(body.decode("utf-8", "replace"))[:1024])
    message = one_line(message)
    cls = _CLASS_BY_CODE.get(code)
    if cls is None:
        if code == "UNKNOWN" and _QUAY_EXPIRED in message:
            cls = ManifestUnknownError
        elif status == 401:
            cls = UnauthorizedError
        elif status == 403:
            cls = DeniedError
        elif status == 404:
            cls = not_found
        elif status == 405:
            cls = UnsupportedError
        else:
            cls = RegistryError
    return cls(
        subject,
        status=status,
        code=code,
        message=message,
        temporary=True if code in TEMPORARY_CODES else None,
        retry_after=parse_retry_after(retry_after),
    )
