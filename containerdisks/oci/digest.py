"""Content digests: parse ``algorithm:hex`` strings, compute and verify them.

Decision: only the algorithms the OCI image spec registers (sha256, sha512) are accepted, with
their exact lowercase-hex lengths, so a malformed digest is refused where it enters the program
instead of failing later as a confusing registry 400 or a silent mismatch.
"""

from __future__ import annotations

import hashlib
import re

from containerdisks.oci.errors import DigestMismatchError, InvalidReferenceError

__all__ = ["compute_digest", "is_digest", "parse_digest", "verify_digest"]

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


def parse_digest(value: str) -> tuple[str, str]:
    """Split ``sha256:<64 hex>`` into (algorithm, hex); raise InvalidReferenceError otherwise."""
    match = _DIGEST.match(value)
    if match is None:
        raise InvalidReferenceError(value, "a digest is <algorithm>:<hex>")
    algorithm, hexpart = match.groups()
    length = _HEX_LENGTH.get(algorithm)
    if length is None:
        raise InvalidReferenceError(value, f"unsupported digest algorithm {algorithm!r}")
    if len(hexpart) != length or not all(c in "0123456789abcdef" for c in hexpart):
        raise InvalidReferenceError(
            value, f"a {algorithm} digest has {length} lowercase hex digits"
        )
    return algorithm, hexpart


def is_digest(value: str) -> bool:
    """Whether ``value`` is a well-formed, supported digest."""
    try:
        parse_digest(value)
    except InvalidReferenceError:
        return False
    return True


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of ``data`` with ``algorithm`` (``sha256`` or ``sha512``)."""
    if algorithm not in _HEX_LENGTH:
        raise InvalidReferenceError(algorithm, "unsupported digest algorithm")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, expected: str, *, subject: str) -> None:
    """Raise DigestMismatchError unless ``data`` hashes to ``expected``."""
    algorithm, _ = parse_digest(expected)
    actual = compute_digest(data, algorithm)
    if actual != expected:
        raise DigestMismatchError(subject, expected=expected, actual=actual)
