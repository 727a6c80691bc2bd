"""The signed documents we publish beside an image, made and checked: no I/O but reading keys.

What cosign writes for an image signed with a key, byte for byte, so cosign, policy-controller,
Kyverno and containers/image (CRI-O, podman) verify our images with nothing of ours:
- the *simple-signing* payload of the tag-based signature (`sha256-<hex>.sig`), signed as is;
- a DSSE envelope (`application/vnd.in-toto+json`) over an in-toto v1 statement, signed over
  DSSE's PAE: cosign v3's image signature (predicate `https://sigstore.dev/cosign/sign/v1`) and
  our SLSA provenance (containerdisks/provenance.py);
- the Sigstore bundle v0.3 (key hint, no transparency log, no timestamp) that wraps an envelope
  for the OCI 1.1 referrer form.

Decisions:
- One key type: ECDSA P-256 with SHA-256, the scheme cosign's spec requires and containers/image
  hard-codes. The private key is a PKCS#8 PEM file, encrypted or not; its passphrase comes only
  from the environment variable `CONTAINERDISKS_SIGN_KEY_PASSPHRASE` (never a flag: it would
  show in `ps`) and is registered as a secret the moment it is read.
- Signatures are deterministic (RFC 6979, `cryptography`'s `deterministic_signing`, which its
  bundled OpenSSL >= 3.2 provides whatever the system's OpenSSL is): the same digest signed
  again gives the same bytes, so a re-run writes nothing. A `cryptography` without it is refused
  with one line rather than silently signing at random.
- Every document is compact JSON with sorted keys, serialized once: a signature covers those
  exact bytes, and they are never re-serialized before they are stored.
- `cryptography` is imported by the functions that handle keys, not by the module: the documents
  (statements, payloads, PAE) are made on every publish, keys only with `--sign-key` or
  `--verify-key`, and importing `cryptography` costs ~20 ms of every one-shot publish.
- Checking is the caller's half of what a Sigstore verifier leaves out: the envelope's
  `payloadType`, the statement's `_type`, `predicateType` and subject digest, not only the
  signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from containerdisks.oci import redact

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "COSIGN_SIGN_PREDICATE",
    "DSSE_MEDIA_TYPE",
    "INTOTO_PAYLOAD_TYPE",
    "PASSPHRASE_ENV",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING_MEDIA_TYPE",
    "PublicKey",
    "Signer",
    "SigningError",
    "bundle_bytes",
    "canonical_json",
    "check_bundle",
    "check_envelope",
    "check_simple_signing",
    "dsse_bytes",
    "pae",
    "signature_statement",
    "simple_signing_payload",
]

PASSPHRASE_ENV = "CONTAINERDISKS_SIGN_KEY_PASSPHRASE"  # noqa: S105 - a variable's name
SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
INTOTO_STATEMENT = "https://in-toto.io/Statement/v1"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
_COSIGN_TYPE = "cosign container image signature"
_MAX_KEY_FILE = 64 * 1024


class SigningError(Exception):
    """A key cannot be used, or a signed document does not check: one line naming which."""


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the one serialization of every document we sign."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise SigningError(f"{what}: not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"{what}: not base64") from None


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise SigningError(f"{what} {path}: {e.strerror or e}") from None
    if len(data) > _MAX_KEY_FILE:
        raise SigningError(f"{what} {path}: larger than {_MAX_KEY_FILE} bytes, not a PEM key")
    return data


def _p256(key: object, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - see module doc

    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or not (
        isinstance(key.curve, ec.SECP256R1)
    ):
        raise SigningError(f"{what}: not an ECDSA P-256 key (cosign's scheme)")


class PublicKey:
    """An ECDSA P-256 public key that checks signatures (ASN.1 DER, SHA-256)."""

    def __init__(self, key: ec.EllipticCurvePublicKey, name: str) -> None:
        _p256(key, name)
        self.key = key
        self.name = name

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        """The PEM `SubjectPublicKeyInfo` at `path` (cosign's `.pub` format)."""
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

        data = _read_key_file(path, "public key")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise SigningError(f"public key {path}: not a PEM public key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SigningError(f"public key {path}: not an ECDSA P-256 key (cosign's scheme)")
        return cls(key, f"public key {path}")

    @property
    def hint(self) -> str:
        """cosign's key hint: base64 of the SHA-256 of the DER SubjectPublicKeyInfo."""
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        der = self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return _b64(hashlib.sha256(der).digest())

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

        try:
            self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class Signer:
    """An ECDSA P-256 private key that signs deterministically (RFC 6979)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, name: str) -> None:
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

        _p256(key, name)
        self._key = key
        self.name = name
        self.public = PublicKey(key.public_key(), name)
        try:
            self._algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
            self.sign(b"probe")
        except (TypeError, UnsupportedAlgorithm):
            raise SigningError(
                f"{name}: this cryptography/OpenSSL cannot sign deterministically (RFC 6979); "
                "install cryptography >= 43"
            ) from None

    @classmethod
    def load(cls, path: Path) -> Signer:
        """The PKCS#8 PEM private key at `path`, decrypted with `$CONTAINERDISKS_SIGN_KEY_
        PASSPHRASE` when it is encrypted."""
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

        data = _read_key_file(path, "signing key")
        passphrase = os.environ.get(PASSPHRASE_ENV) or None
        redact.register(passphrase)
        try:
            key = serialization.load_pem_private_key(
                data, passphrase.encode() if passphrase else None
            )
        except TypeError:  # encrypted and no passphrase, or a passphrase for a plain key
            need = "no passphrase is needed" if passphrase else f"set {PASSPHRASE_ENV}"
            raise SigningError(f"signing key {path}: passphrase mismatch ({need})") from None
        except (ValueError, UnsupportedAlgorithm):
            raise SigningError(
                f"signing key {path}: not a PKCS#8 PEM private key, or a wrong passphrase "
                f"({PASSPHRASE_ENV})"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SigningError(f"signing key {path}: not an ECDSA P-256 key (cosign's scheme)")
        return cls(key, f"signing key {path}")

    def sign(self, data: bytes) -> bytes:
        """The ASN.1 DER signature of `data`; the same bytes for the same data and key."""
        return self._key.sign(data, self._algorithm)


# -- the tag-based signature (`.sig`) --------------------------------------------------------


def simple_signing_payload(identity: str, digest: str) -> bytes:
    """cosign's payload for `digest`, with the repository `identity` (`host/namespace/name`, no
    tag: containers/image policies accept it with `matchRepository`). `optional` is null, as
    cosign writes it: no timestamp, so the payload is the same on every run."""
    return canonical_json(
        {
            "critical": {
                "identity": {"docker-reference": identity},
                "image": {"docker-manifest-digest": digest},
                "type": _COSIGN_TYPE,
            },
            "optional": None,
        }
    )


def check_simple_signing(payload: bytes, signature_b64: object, key: PublicKey, digest: str) -> str:
    """Check one `.sig` layer: the signature over the exact payload bytes, then that the payload
    (parsed as strictly as containers/image does) names `digest`. Returns its identity."""
    signature = _unb64(signature_b64, f"signature of {digest}")
    if not key.verifies(signature, payload):
        raise SigningError(f"signature of {digest}: does not verify with {key.name}")
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        if set(doc) != {"critical", "optional"} or set(critical) != {"type", "image", "identity"}:
            raise KeyError("fields")
        named, identity = critical["image"]["docker-manifest-digest"], critical["identity"]
        ref, kind = identity["docker-reference"], critical["type"]
    except (ValueError, KeyError, TypeError):
        raise SigningError(f"signature of {digest}: not a simple-signing payload") from None
    if kind != _COSIGN_TYPE:
        raise SigningError(f"signature of {digest}: payload type {kind!r}")
    if named != digest:
        raise SigningError(f"signature of {digest}: the payload names {named!r}")
    return str(ref)


# -- DSSE and the Sigstore bundle ------------------------------------------------------------


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the envelope's signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def signature_statement(digest: str) -> bytes:
    """cosign v3's image signature: an in-toto statement about `digest`, empty predicate."""
    return statement([digest], COSIGN_SIGN_PREDICATE, {})


def statement(digests: list[str], predicate_type: str, predicate: dict[str, Any]) -> bytes:
    """An in-toto v1 statement whose subjects are `digests` (no name, as cosign writes it)."""
    subjects = [{"digest": {"sha256": d.removeprefix("sha256:")}} for d in digests]
    return canonical_json(
        {
            "_type": INTOTO_STATEMENT,
            "predicate": predicate,
            "predicateType": predicate_type,
            "subject": subjects,
        }
    )


def _envelope(signer: Signer, body: bytes) -> dict[str, Any]:
    return {
        "payload": _b64(body),
        "payloadType": INTOTO_PAYLOAD_TYPE,
        "signatures": [{"sig": _b64(signer.sign(pae(INTOTO_PAYLOAD_TYPE, body)))}],
    }


def dsse_bytes(signer: Signer, body: bytes) -> bytes:
    """A DSSE envelope around the statement `body` (cosign's `.att` layer blob)."""
    return canonical_json(_envelope(signer, body))


def bundle_bytes(signer: Signer, body: bytes) -> bytes:
    """A Sigstore bundle v0.3 holding a DSSE envelope around `body`, key hint only: what
    `cosign sign --key` stores as a referrer (no transparency log entry, no timestamp)."""
    return canonical_json(
        {
            "dsseEnvelope": _envelope(signer, body),
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": signer.public.hint}},
        }
    )


def check_envelope(
    envelope: object, key: PublicKey, digest: str, predicate_type: str, what: str
) -> dict[str, Any]:
    """Check a DSSE envelope (parsed JSON): exactly one signature that verifies over the PAE,
    an in-toto payload, an in-toto v1 statement of `predicate_type` naming `digest` among its
    subjects. Returns the statement."""
    if not isinstance(envelope, dict):
        raise SigningError(f"{what}: not a DSSE envelope")
    if envelope.get("payloadType") != INTOTO_PAYLOAD_TYPE:
        raise SigningError(f"{what}: payloadType {envelope.get('payloadType')!r}")
    body = _unb64(envelope.get("payload"), f"{what} payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise SigningError(f"{what}: not exactly one signature")
    sig = signatures[0].get("sig") if isinstance(signatures[0], dict) else None
    if not key.verifies(_unb64(sig, f"{what} signature"), pae(INTOTO_PAYLOAD_TYPE, body)):
        raise SigningError(f"{what}: does not verify with {key.name}")
    try:
        doc = json.loads(body)
        subjects = [s["digest"]["sha256"] for s in doc["subject"]]
        kind, ptype = doc["_type"], doc["predicateType"]
    except (ValueError, KeyError, TypeError):
        raise SigningError(f"{what}: not an in-toto statement") from None
    if kind != INTOTO_STATEMENT:
        raise SigningError(f"{what}: statement type {kind!r}")
    if ptype != predicate_type:
        raise SigningError(f"{what}: predicateType {ptype!r}, expected {predicate_type!r}")
    if digest.removeprefix("sha256:") not in subjects:
        raise SigningError(f"{what}: the statement's subjects do not name {digest}")
    assert isinstance(doc, dict)
    return doc


def check_bundle(
    data: bytes, key: PublicKey, digest: str, predicate_type: str, what: str
) -> dict[str, Any]:
    """Check a Sigstore bundle (v0.3, DSSE content) as `check_envelope` does its envelope."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise SigningError(f"{what}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise SigningError(f"{what}: not a Sigstore bundle v0.3")
    return check_envelope(doc.get("dsseEnvelope"), key, digest, predicate_type, what)


@dataclass(frozen=True)
class Attestation:
    """A statement to attach to an image, serialized once."""

    predicate_type: str
    body: bytes
