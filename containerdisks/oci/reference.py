"""Names: parse ``host/namespace`` and ``host/repo:tag@digest`` strings, and the HTTP scheme rule.

Decision: strings are split exactly as docker splits them (the first component is the registry
host when it contains ``.`` or ``:`` or is ``localhost``, else the registry is Docker Hub), so a
name means here what it means to docker, podman, skopeo and medius. Which hosts may fall back to
plain HTTP is decided here too, as a pure function, so the rule is tested without a network.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from containerdisks.oci.digest import parse_digest
from containerdisks.oci.errors import InvalidReferenceError

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API_HOST",
    "ImageReference",
    "RegistryNamespace",
    "api_host",
    "http_fallback_allowed",
    "parse_image_reference",
    "parse_registry",
    "validate_repository",
    "validate_tag",
]

#: The canonical name of Docker Hub, used for names without a registry host.
DOCKER_HUB = "docker.io"
#: The host that serves Docker Hub's registry API.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API_HOST})

_LABEL = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MAX_REPOSITORY = 255

_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)


def _split_host_port(value: str, host: str) -> tuple[str, str | None]:
    """(hostname or IP, port) of a registry host; ``value`` is the whole string for messages."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise InvalidReferenceError(value, f"unclosed '[' in host {host!r}")
        name, rest = host[1:end], host[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise InvalidReferenceError(value, f"{name!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise InvalidReferenceError(value, f"unexpected {rest!r} after ']' in host")
        return name, rest[1:] if rest else None
    name, sep, port = host.partition(":")
    return name, port if sep else None


def _validate_host(value: str, host: str) -> str:
    """The host, lowercased, or InvalidReferenceError naming ``value``."""
    name, port = _split_host_port(value, host)
    if port is not None and (not _PORT.match(port) or not 0 < int(port) < 65536):
        raise InvalidReferenceError(value, f"invalid port {port!r} in registry host {host!r}")
    if not host.startswith("[") and not _HOSTNAME.match(name):
        raise InvalidReferenceError(value, f"invalid registry host {host!r}")
    return host.lower()


def _canonical_registry(host: str) -> str:
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def api_host(registry: str) -> str:
    """The host serving the registry API for ``registry`` (Docker Hub's differs from its name)."""
    return DOCKER_HUB_API_HOST if registry in _DOCKER_HUB_ALIASES else registry


def http_fallback_allowed(host: str) -> bool:
    """Whether ``host`` may be reached over plain HTTP when it refuses TLS.

    True for loopback addresses (IPv4 and IPv6), ``localhost``, ``*.local`` names and RFC 1918
    private IPv4 addresses, with or without a port; ``insecure_skip_tls`` widens it to any host.
    """
    name, _ = _split_host_port(host, host.lower())
    if name == "localhost" or name.endswith(".local"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if address.is_loopback:
        return True
    return isinstance(address, ipaddress.IPv4Address) and any(address in net for net in _PRIVATE_V4)


def _is_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def _validate_path(value: str, path: str, what: str) -> None:
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidReferenceError(
                value,
                f"{what} component {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'",
            )


def validate_repository(name: str) -> str:
    """Return ``name`` if it is a valid repository path (``a/b/c``), else raise."""
    if not name:
        raise InvalidReferenceError(name, "empty repository name")
    if len(name) > _MAX_REPOSITORY:
        raise InvalidReferenceError(name, f"repository longer than {_MAX_REPOSITORY} characters")
    _validate_path(name, name, "repository")
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise."""
    if not _TAG.match(tag):
        raise InvalidReferenceError(
            tag, "a tag is 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag


@dataclass(frozen=True)
class RegistryNamespace:
    """A registry host and a namespace within it, e.g. ``quay.io`` + ``containerdisks``.

    ``host`` is the registry's name as written (lowercased; Docker Hub's aliases become
    ``docker.io``), with its port if any; ``api_host`` is where its API is served.
    """

    host: str
    namespace: str

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (``registry-1.docker.io`` for Docker Hub)."""
        return api_host(self.host)

    def repository(self, name: str) -> str:
        """The full repository path of image ``name`` in this namespace."""
        full = f"{self.namespace}/{name}" if self.namespace else name
        return validate_repository(full)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}" if self.namespace else self.host


def parse_registry(value: str) -> RegistryNamespace:
    """Parse ``host[:port][/namespace]`` or a bare Docker Hub namespace.

    >>> parse_registry("quay.io/containerdisks")
    RegistryNamespace(host='quay.io', namespace='containerdisks')
    >>> parse_registry("containerdisks").api_host
    'registry-1.docker.io'
    """
    if not value or value != value.strip():
        raise InvalidReferenceError(value, "empty, or surrounded by whitespace")
    if "://" in value:
        raise InvalidReferenceError(value, "write host[:port]/namespace, without a URL scheme")
    text = value.removesuffix("/")
    first, _, rest = text.partition("/")
    if _is_host(first):
        registry = _canonical_registry(_validate_host(value, first))
        namespace = rest
    else:
        registry, namespace = DOCKER_HUB, text
    if namespace:
        _validate_path(value, namespace, "namespace")
    return RegistryNamespace(registry, namespace)


@dataclass(frozen=True)
class ImageReference:
    """A full image reference: registry host, repository, and a tag and/or a digest."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None
        return self.tag

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (``registry-1.docker.io`` for Docker Hub)."""
        return api_host(self.host)

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_image_reference(value: str) -> ImageReference:
    """Parse ``[host[:port]/]repo/path[:tag][@digest]``, as docker does.

    Without a tag or digest the tag is ``latest``; a one-component Docker Hub repository gets
    the ``library/`` prefix.
    """
    if not value or value != value.strip():
        raise InvalidReferenceError(value, "empty, or surrounded by whitespace")
    if "://" in value:
        raise InvalidReferenceError(
            value, "write host[:port]/repository[:tag], without a URL scheme"
        )
    remainder, at, digest = value.partition("@")
    digest_value: str | None = None
    if at:
        try:
            parse_digest(digest)
        except InvalidReferenceError as exc:
            raise InvalidReferenceError(value, exc.reason) from None
        digest_value = digest
    first, slash, path = remainder.partition("/")
    if slash and _is_host(first):
        registry = _canonical_registry(_validate_host(value, first))
    else:
        registry, path = DOCKER_HUB, remainder
    repository, colon, tag = path.rpartition(":")
    if not colon:
        repository, tag = path, ""
    tag_value: str | None = None
    if colon:
        if not _TAG.match(tag):
            raise InvalidReferenceError(value, f"invalid tag {tag!r}")
        tag_value = tag
    elif digest_value is None:
        tag_value = "latest"
    if not repository:
        raise InvalidReferenceError(value, "missing repository name")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if len(repository) > _MAX_REPOSITORY:
        raise InvalidReferenceError(value, f"repository longer than {_MAX_REPOSITORY} characters")
    _validate_path(value, repository, "repository")
    return ImageReference(registry, repository, tag_value, digest_value)
