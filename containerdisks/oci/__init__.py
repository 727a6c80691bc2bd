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
"""

from containerdisks.oci.auth import Credentials, TokenCache
from containerdisks.oci.client import RegistryClient, ResolvedImage
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
    PlatformNotFoundError,
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
    "PlatformNotFoundError",
    "ProtocolError",
    "RegistryClient",
    "RegistryError",
    "RegistryNamespace",
    "RepositoryUnknownError",
    "ResolvedImage",
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
