"""containerdisks.oci: a small, self-contained async client for OCI registries.

Written by hand because no well-kept async Python OCI client exists (oras-py is synchronous;
the async ones are small, stale or incomplete). It depends on aiohttp, yarl and the standard
library only, and imports nothing else of containerdisks (an import-linter contract checks
this), so it could be published alone.

Modules, one job each:

- :mod:`.reference`  names: ``host/namespace`` and image references, and the HTTP scheme rule
- :mod:`.digest`     ``algorithm:hex`` digests: parse, compute, verify
- :mod:`.media`      media types, descriptors, platforms, manifests as exact bytes
- :mod:`.errors`     the exception tree (drawn in its docstring)
- :mod:`.redact`     the secrets the process holds, masked in any text it emits
- :mod:`.messages`   immutable request/response values
- :mod:`.auth`       the sans-I/O authentication flow (Basic, Bearer tokens, OAuth2)
- :mod:`.credentials` credentials from auth.json / config.json files and credential helpers
- :mod:`.transport`  the one place that does HTTP and maps third-party exceptions
- :mod:`.upload`     :class:`BlobUpload`: one streamed blob upload session
- :mod:`.client`     :class:`RegistryClient`: the registry operations, read and write

The names below are loaded on first use (PEP 562 `__getattr__`): importing one light module
(`containerdisks.oci.redact`, `.reference`) runs this package's `__init__`, and must not
load aiohttp with it (`containerdisks catalog` and `--help` start-up time).
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from containerdisks.oci.auth import Credentials, TokenCache
    from containerdisks.oci.client import RegistryClient
    from containerdisks.oci.credentials import find_credentials
    from containerdisks.oci.digest import compute_digest, is_digest, parse_digest, verify_digest
    from containerdisks.oci.errors import (
        BlobSizeError,
        BlobUnknownError,
        CertificateError,
        ConnectError,
        ConnectionLostError,
        ContentError,
        ContentTooLargeError,
        CredentialsError,
        DeniedError,
        DigestMismatchError,
        InvalidManifestError,
        InvalidReferenceError,
        ManifestUnknownError,
        NotFoundError,
        OCIError,
        ProtocolError,
        RegistryError,
        RepositoryUnknownError,
        TLSError,
        TransferTooSlowError,
        TransportError,
        TransportTimeoutError,
        UnauthorizedError,
        UnsupportedError,
    )
    from containerdisks.oci.media import (
        ACCEPT_MANIFESTS,
        DOCKER_CONFIG,
        DOCKER_LAYER_GZIP,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
        IMAGE_MANIFEST_MEDIA_TYPES,
        INDEX_MEDIA_TYPES,
        MANIFEST_MEDIA_TYPES,
        OCI_CONFIG,
        OCI_INDEX,
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_MANIFEST,
        Descriptor,
        ImageManifest,
        Manifest,
        Platform,
    )
    from containerdisks.oci.reference import (
        DOCKER_HUB,
        DOCKER_HUB_API_HOST,
        ImageReference,
        RegistryNamespace,
        http_fallback_allowed,
        parse_image_reference,
        parse_registry,
    )
    from containerdisks.oci.upload import BlobUpload

_WHERE = {
    "Credentials": "containerdisks.oci.auth",
    "TokenCache": "containerdisks.oci.auth",
    "RegistryClient": "containerdisks.oci.client",
    "find_credentials": "containerdisks.oci.credentials",
    "compute_digest": "containerdisks.oci.digest",
    "is_digest": "containerdisks.oci.digest",
    "parse_digest": "containerdisks.oci.digest",
    "verify_digest": "containerdisks.oci.digest",
    "BlobSizeError": "containerdisks.oci.errors",
    "BlobUnknownError": "containerdisks.oci.errors",
    "CertificateError": "containerdisks.oci.errors",
    "ConnectError": "containerdisks.oci.errors",
    "ConnectionLostError": "containerdisks.oci.errors",
    "ContentError": "containerdisks.oci.errors",
    "ContentTooLargeError": "containerdisks.oci.errors",
    "CredentialsError": "containerdisks.oci.errors",
    "DeniedError": "containerdisks.oci.errors",
    "DigestMismatchError": "containerdisks.oci.errors",
    "InvalidManifestError": "containerdisks.oci.errors",
    "InvalidReferenceError": "containerdisks.oci.errors",
    "ManifestUnknownError": "containerdisks.oci.errors",
    "NotFoundError": "containerdisks.oci.errors",
    "OCIError": "containerdisks.oci.errors",
    "ProtocolError": "containerdisks.oci.errors",
    "RegistryError": "containerdisks.oci.errors",
    "RepositoryUnknownError": "containerdisks.oci.errors",
    "TLSError": "containerdisks.oci.errors",
    "TransferTooSlowError": "containerdisks.oci.errors",
    "TransportError": "containerdisks.oci.errors",
    "TransportTimeoutError": "containerdisks.oci.errors",
    "UnauthorizedError": "containerdisks.oci.errors",
    "UnsupportedError": "containerdisks.oci.errors",
    "ACCEPT_MANIFESTS": "containerdisks.oci.media",
    "DOCKER_CONFIG": "containerdisks.oci.media",
    "DOCKER_LAYER_GZIP": "containerdisks.oci.media",
    "DOCKER_MANIFEST": "containerdisks.oci.media",
    "DOCKER_MANIFEST_LIST": "containerdisks.oci.media",
    "IMAGE_MANIFEST_MEDIA_TYPES": "containerdisks.oci.media",
    "INDEX_MEDIA_TYPES": "containerdisks.oci.media",
    "MANIFEST_MEDIA_TYPES": "containerdisks.oci.media",
    "OCI_CONFIG": "containerdisks.oci.media",
    "OCI_INDEX": "containerdisks.oci.media",
    "OCI_LAYER": "containerdisks.oci.media",
    "OCI_LAYER_GZIP": "containerdisks.oci.media",
    "OCI_LAYER_ZSTD": "containerdisks.oci.media",
    "OCI_MANIFEST": "containerdisks.oci.media",
    "Descriptor": "containerdisks.oci.media",
    "ImageManifest": "containerdisks.oci.media",
    "Manifest": "containerdisks.oci.media",
    "Platform": "containerdisks.oci.media",
    "DOCKER_HUB": "containerdisks.oci.reference",
    "DOCKER_HUB_API_HOST": "containerdisks.oci.reference",
    "ImageReference": "containerdisks.oci.reference",
    "RegistryNamespace": "containerdisks.oci.reference",
    "http_fallback_allowed": "containerdisks.oci.reference",
    "parse_image_reference": "containerdisks.oci.reference",
    "parse_registry": "containerdisks.oci.reference",
    "BlobUpload": "containerdisks.oci.upload",
}

__all__ = [
    "ACCEPT_MANIFESTS",
    "DOCKER_CONFIG",
    "DOCKER_HUB",
    "DOCKER_HUB_API_HOST",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_MANIFEST_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "BlobSizeError",
    "BlobUnknownError",
    "BlobUpload",
    "CertificateError",
    "ConnectError",
    "ConnectionLostError",
    "ContentError",
    "ContentTooLargeError",
    "Credentials",
    "CredentialsError",
    "DeniedError",
    "Descriptor",
    "DigestMismatchError",
    "ImageManifest",
    "ImageReference",
    "InvalidManifestError",
    "InvalidReferenceError",
    "Manifest",
    "ManifestUnknownError",
    "NotFoundError",
    "OCIError",
    "Platform",
    "ProtocolError",
    "RegistryClient",
    "RegistryError",
    "RegistryNamespace",
    "RepositoryUnknownError",
    "TLSError",
    "TokenCache",
    "TransferTooSlowError",
    "TransportError",
    "TransportTimeoutError",
    "UnauthorizedError",
    "UnsupportedError",
    "compute_digest",
    "find_credentials",
    "http_fallback_allowed",
    "is_digest",
    "parse_digest",
    "parse_image_reference",
    "parse_registry",
    "verify_digest",
]


def __getattr__(name: str) -> _typing.Any:
    """Import the module that defines `name` on first use, and keep the value here."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(where), name)
    globals()[name] = value
    return value
