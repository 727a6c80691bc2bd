"""Signatures and attestations beside an image: written, read back and checked, copied.

For each digest signed (the index or single manifest, and every per-arch manifest), in the
image's repository, both ways cosign stores them:
- tag-based: `sha256-<hex>.sig` (one simple-signing layer, the signature in the
  `dev.cosignproject.cosign/signature` annotation) and `sha256-<hex>.att` (one DSSE layer with
  the provenance, annotated with its `predicateType`);
- OCI 1.1 referrers: one manifest per Sigstore bundle (the cosign v3 signature, and the
  provenance), `artifactType` the bundle type, the empty config, `subject` the image, pushed by
  digest, and listed in the referrers tag-schema index `sha256-<hex>`.

Decisions:
- The referrers index is always maintained, also on a registry that has the referrers API:
  docker-registry 2.8 has none, a registry that enables it later must include what the tag lists
  (distribution-spec "Enabling the Referrers API"), and readers here use the tag only.
  Descriptors already listed are kept, in order; ours are appended when missing.
- Nothing time-dependent (no `org.opencontainers.image.created`): signatures are deterministic,
  so a second run computes the same bytes; every tag is HEADed and written only when it names
  other bytes, blobs only when absent. A re-run writes nothing.
- The `.sig` and `.att` manifests hold exactly our layer: a new key replaces the old signature.
- Checking (`check_image`) needs, for every digest, a `.sig` layer, a `.att` layer and one
  bundle of each kind that verify with the key and name that digest; the first failure is one
  line naming the tag or referrer.
- Copying (`copy_attachments`, for promote) brings the `.sig`/`.att` manifests and every
  referrer with `registry/copy.py`, then writes the tags; the target's referrers index keeps
  what it listed and gains the source's.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from containerdisks import oci
from containerdisks.oci.media import parse_image_manifest, parse_json_object
from containerdisks.provenance import SLSA_PREDICATE
from containerdisks.registry.copy import copy_manifest
from containerdisks.registry.stores import Store
from containerdisks.registry.walk import children
from containerdisks.retry import RetryPolicy
from containerdisks.signing import (
    BUNDLE_MEDIA_TYPE,
    COSIGN_SIGN_PREDICATE,
    DSSE_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    PublicKey,
    Signer,
    SigningError,
    bundle_bytes,
    canonical_json,
    check_bundle,
    check_envelope,
    check_simple_signing,
    dsse_bytes,
    signature_statement,
    simple_signing_payload,
)

__all__ = [
    "Checked",
    "attach",
    "check_image",
    "copy_attachments",
    "image_digests",
    "is_signed",
    "referrers_tag",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
_CONTENT = "dev.sigstore.bundle.content"
_PREDICATE = "dev.sigstore.bundle.predicateType"
_MAX_DOC = 4 * 1024 * 1024  # a signature payload, envelope or bundle: small JSON


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for `digest`: `sha256-<hex>`."""
    return digest.replace(":", "-")


def _config(layer_digest: str) -> bytes:
    """cosign's dummy image config for a signature manifest: its `diff_ids` list the layer."""
    return canonical_json(
        {
            "architecture": "",
            "config": {},
            "os": "",
            "rootfs": {"diff_ids": [layer_digest], "type": "layers"},
        }
    )


def _manifest(
    config: oci.Descriptor,
    layer: oci.Descriptor,
    *,
    subject: oci.Descriptor | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    doc: dict[str, Any] = {
        "config": {"digest": config.digest, "mediaType": config.media_type, "size": config.size},
        "layers": [_descriptor_json(layer)],
        "mediaType": oci.OCI_MANIFEST,
        "schemaVersion": 2,
    }
    if artifact_type:
        doc["artifactType"] = artifact_type
    if annotations:
        doc["annotations"] = annotations
    if subject is not None:
        doc["subject"] = {
            "digest": subject.digest,
            "mediaType": subject.media_type,
            "size": subject.size,
        }
    return canonical_json(doc)


def _descriptor_json(d: oci.Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"digest": d.digest, "mediaType": d.media_type, "size": d.size}
    if d.annotations:
        out["annotations"] = dict(d.annotations)
    return out


@dataclass
class _Writer:
    """Writes to one repository, skipping what is already there; counts what it wrote."""

    store: Store
    repo: str
    writes: int = 0

    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _there: set[str] = field(default_factory=set)

    async def blob(self, data: bytes, media_type: str) -> oci.Descriptor:
        """`data` as a blob unless it is there; a blob several steps need at once (the empty
        config, the provenance envelope) is checked and written once, the others wait."""
        digest = oci.compute_digest(data)
        async with self._locks.setdefault(digest, asyncio.Lock()):
            if digest not in self._there:
                if not await self.store.has_blob(self.repo, digest):
                    await self.store.put_blob(self.repo, data)
                    self.writes += 1
                self._there.add(digest)
        return oci.Descriptor(media_type, digest, len(data))

    async def manifest(self, reference: str, data: bytes) -> oci.Descriptor:
        """`data` (an OCI manifest or index) at `reference` (a tag or its digest), unless the
        reference already names these bytes."""
        digest = oci.compute_digest(data)
        media_type = json.loads(data)["mediaType"]
        try:
            head = await self.store.head_manifest(self.repo, reference)
        except oci.NotFoundError:
            head = None
        if head is None or head.digest != digest:
            await self.store.put_manifest(self.repo, reference, media_type, data)
            self.writes += 1
        return oci.Descriptor(media_type, digest, len(data))

    async def layered(
        self,
        reference: str,
        layer: oci.Descriptor,
        config: bytes,
    ) -> oci.Descriptor:
        config_desc = await self.blob(config, oci.OCI_CONFIG)
        return await self.manifest(reference, _manifest(config_desc, layer))

    async def refer(self, subject: str, referrers: list[tuple[oci.Descriptor, bytes]]) -> None:
        """List `referrers` (descriptor, manifest bytes) in `subject`'s tag-schema index."""
        tag = referrers_tag(subject)
        current = await _read_index(self.store, self.repo, tag)
        listed = {d["digest"] for d in current if isinstance(d, dict)}
        entries = list(current)
        for descriptor, data in referrers:
            if descriptor.digest in listed:
                continue
            doc = json.loads(data)
            entry = _descriptor_json(descriptor)
            entry["artifactType"] = doc.get("artifactType") or doc["config"]["mediaType"]
            if doc.get("annotations"):
                entry["annotations"] = doc["annotations"]
            entries.append(entry)
            listed.add(descriptor.digest)
        index = {"manifests": entries, "mediaType": oci.OCI_INDEX, "schemaVersion": 2}
        await self.manifest(tag, canonical_json(index))


async def _read_index(store: Store, repo: str, tag: str) -> list[Any]:
    """The descriptors listed at the referrers tag `tag` (raw JSON), [] when there is none."""
    try:
        head = await store.head_manifest(repo, tag)
    except oci.NotFoundError:
        return []
    if head is None:
        return []
    manifest = await store.get_manifest(repo, tag)
    if manifest.media_type != oci.OCI_INDEX:
        raise oci.InvalidManifestError(
            f"{store.host}/{repo}:{tag}: the referrers tag holds {manifest.media_type}, "
            "not an OCI index"
        )
    entries = parse_json_object(manifest.data, f"{repo}:{tag}").get("manifests")
    return entries if isinstance(entries, list) else []


async def image_digests(store: Store, repo: str, top: oci.Manifest) -> list[oci.Descriptor]:
    """The descriptors of `top` and, for an index, of each manifest it lists."""
    digests = [top.descriptor()]
    if top.is_index:
        async for entry, _ in children(store, repo, top, f"{store.host}/{repo}@{top.digest}"):
            digests.append(oci.Descriptor(entry.media_type, entry.digest, entry.size))
    return digests


async def attach(
    store: Store,
    repo: str,
    images: list[oci.Descriptor],
    *,
    signer: Signer,
    identity: str,
    provenance: bytes,
) -> int:
    """Sign each of `images` and attach `provenance` (a statement naming them all) to each,
    both ways; returns how many registry writes that took (0 when all is there).
    `identity`: the repository named in the simple-signing payloads."""
    w = _Writer(store, repo)
    envelope = dsse_bytes(signer, provenance)
    provenance_bundle = bundle_bytes(signer, provenance)
    await _together(
        *(
            _attach_one(
                w,
                image,
                signer=signer,
                identity=identity,
                envelope=envelope,
                provenance_bundle=provenance_bundle,
            )
            for image in images
        )
    )
    log.info("signed", repository=repo, digest=images[0].digest, writes=w.writes)
    return w.writes


async def _attach_one(
    w: _Writer,
    image: oci.Descriptor,
    *,
    signer: Signer,
    identity: str,
    envelope: bytes,
    provenance_bundle: bytes,
) -> None:
    """The `.sig`, the `.att` and the two bundle referrers of one digest, side by side."""
    stem = referrers_tag(image.digest)

    async def sig() -> None:
        payload = simple_signing_payload(identity, image.digest)
        signature = oci.Descriptor(
            SIMPLE_SIGNING_MEDIA_TYPE,
            (await w.blob(payload, SIMPLE_SIGNING_MEDIA_TYPE)).digest,
            len(payload),
            annotations={SIGNATURE_ANNOTATION: _b64(signer.sign(payload))},
        )
        await w.layered(f"{stem}.sig", signature, _config(signature.digest))

    async def att() -> None:
        blob = await w.blob(envelope, DSSE_MEDIA_TYPE)
        layer = oci.Descriptor(
            DSSE_MEDIA_TYPE,
            blob.digest,
            blob.size,
            annotations={"predicateType": SLSA_PREDICATE, SIGNATURE_ANNOTATION: ""},
        )
        await w.layered(f"{stem}.att", layer, _config(layer.digest))

    async def referrer(bundle: bytes, predicate: str) -> tuple[oci.Descriptor, bytes]:
        layer, _ = await _together(
            w.blob(bundle, BUNDLE_MEDIA_TYPE), w.blob(EMPTY_BLOB, EMPTY_MEDIA_TYPE)
        )
        data = _manifest(
            oci.Descriptor(EMPTY_MEDIA_TYPE, oci.compute_digest(EMPTY_BLOB), 2),
            layer,
            subject=image,
            artifact_type=BUNDLE_MEDIA_TYPE,
            annotations={_CONTENT: "dsse-envelope", _PREDICATE: predicate},
        )
        return await w.manifest(oci.compute_digest(data), data), data

    async def referrers() -> None:
        listed = await _together(
            referrer(
                bundle_bytes(signer, signature_statement(image.digest)), COSIGN_SIGN_PREDICATE
            ),
            referrer(provenance_bundle, SLSA_PREDICATE),
        )
        await w.refer(image.digest, listed)  # in this order: the index lists them so

    await _together(sig(), att(), referrers())


async def _together(*steps: Coroutine[Any, Any, T]) -> list[T]:
    """Await `steps` side by side; their results in order. The first failure is raised as
    itself (not an ExceptionGroup: callers catch `oci.OCIError`), the others cancelled."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(step) for step in steps]
    except BaseExceptionGroup as failed:
        raise _first_failure(failed) from None
    return [t.result() for t in tasks]


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error = group.exceptions[0]
    return _first_failure(error) if isinstance(error, BaseExceptionGroup) else error


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def is_signed(store: Store, repo: str, digest: str) -> bool:
    """Whether `digest` has a `.sig` tag (one HEAD): the cheap check of an unchanged entry."""
    try:
        return await store.head_manifest(repo, f"{referrers_tag(digest)}.sig") is not None
    except oci.NotFoundError:
        return False


# -- checking --------------------------------------------------------------------------------


@dataclass
class Checked:
    """What checking one image found: its identity and its provenance statements by digest."""

    digests: list[str] = field(default_factory=list)
    identity: str = ""
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)


async def _layers(store: Store, repo: str, tag: str, media_type: str) -> list[oci.Descriptor]:
    where = f"{store.host}/{repo}:{tag}"
    try:
        manifest = await store.get_manifest(repo, tag)
    except oci.NotFoundError:
        raise SigningError(f"{where}: not found (unsigned)") from None
    layers = [d for d in parse_image_manifest(manifest, where).layers if d.media_type == media_type]
    if not layers:
        raise SigningError(f"{where}: no {media_type} layer")
    return layers


async def _doc(store: Store, repo: str, d: oci.Descriptor) -> bytes:
    if d.size > _MAX_DOC:
        raise SigningError(f"{store.host}/{repo}@{d.digest}: {d.size} bytes, too large")
    return await store.get_blob(repo, d.digest, max_size=_MAX_DOC)


def _first(problems: list[str], what: str) -> SigningError:
    return SigningError(problems[0] if problems else f"{what}: nothing to check")


async def _check_sig(store: Store, repo: str, digest: str, key: PublicKey) -> str:
    tag = f"{referrers_tag(digest)}.sig"
    problems = []
    for layer in await _layers(store, repo, tag, SIMPLE_SIGNING_MEDIA_TYPE):
        payload = await _doc(store, repo, layer)
        try:
            sig = layer.annotations.get(SIGNATURE_ANNOTATION)
            return check_simple_signing(payload, sig, key, digest)
        except SigningError as e:
            problems.append(f"{store.host}/{repo}:{tag}: {e}")
    raise _first(problems, tag)


async def _check_att(
    store: Store, repo: str, digest: str, key: PublicKey, predicate: str
) -> dict[str, Any]:
    tag = f"{referrers_tag(digest)}.att"
    problems = []
    for layer in await _layers(store, repo, tag, DSSE_MEDIA_TYPE):
        try:
            envelope = json.loads(await _doc(store, repo, layer))
            return check_envelope(envelope, key, digest, predicate, f"{store.host}/{repo}:{tag}")
        except ValueError:
            problems.append(f"{store.host}/{repo}:{tag}: the DSSE envelope is not JSON")
        except SigningError as e:
            problems.append(str(e))
    raise _first(problems, tag)


async def _check_referrers(
    store: Store, repo: str, digest: str, key: PublicKey, predicates: tuple[str, ...]
) -> None:
    tag = referrers_tag(digest)
    missing = set(predicates)
    problems = []
    for entry in await _read_index(store, repo, tag):
        if not isinstance(entry, dict) or entry.get("artifactType") != BUNDLE_MEDIA_TYPE:
            continue
        d = oci.Descriptor.from_json(entry, f"{repo}:{tag}")
        what = f"{store.host}/{repo}@{d.digest} (referrer of {digest})"
        manifest = await store.get_manifest(repo, d.digest)
        doc = parse_json_object(manifest.data, what)
        subject = doc.get("subject")
        if not isinstance(subject, dict) or subject.get("digest") != digest:
            problems.append(f"{what}: its subject is not {digest}")
            continue
        for layer in parse_image_manifest(manifest, what).layers:
            if layer.media_type != BUNDLE_MEDIA_TYPE:
                continue
            predicate = (doc.get("annotations") or {}).get(_PREDICATE, COSIGN_SIGN_PREDICATE)
            try:
                check_bundle(await _doc(store, repo, layer), key, digest, predicate, what)
            except SigningError as e:
                problems.append(str(e))
            else:
                missing.discard(predicate)
    if missing:
        if problems:
            raise SigningError(problems[0])
        raise SigningError(
            f"{store.host}/{repo}:{tag}: no Sigstore bundle of {sorted(missing)[0]} (unsigned)"
        )


async def check_image(store: Store, repo: str, top: oci.Manifest, key: PublicKey) -> Checked:
    """Check that `top` and every manifest it lists are signed and attested with `key`, both
    ways; raises SigningError (one line) at the first problem."""
    checked = Checked()
    for image in await image_digests(store, repo, top):
        checked.identity = await _check_sig(store, repo, image.digest, key)
        checked.provenance[image.digest] = await _check_att(
            store, repo, image.digest, key, SLSA_PREDICATE
        )
        await _check_referrers(
            store, repo, image.digest, key, (COSIGN_SIGN_PREDICATE, SLSA_PREDICATE)
        )
        checked.digests.append(image.digest)
    return checked


# -- copying ---------------------------------------------------------------------------------


async def copy_attachments(
    source: Store,
    src_repo: str,
    target: Store,
    dst_repo: str,
    top: oci.Manifest,
    *,
    backoff: RetryPolicy,
) -> int:
    """Copy the `.sig`/`.att` tags and referrers of `top` and its manifests to the target;
    returns how many of them there were (0: the image is unsigned)."""
    found = 0
    w = _Writer(target, dst_repo)
    for image in await image_digests(source, src_repo, top):
        stem = referrers_tag(image.digest)
        for tag in (f"{stem}.sig", f"{stem}.att"):
            try:
                manifest = await source.get_manifest(src_repo, tag)
            except oci.NotFoundError:
                continue
            await copy_manifest(source, src_repo, target, dst_repo, manifest, backoff=backoff)
            await w.manifest(tag, manifest.data)
            found += 1
        referrers = []
        for entry in await _read_index(source, src_repo, stem):
            d = oci.Descriptor.from_json(entry, f"{src_repo}:{stem}")
            manifest = await source.get_manifest(src_repo, d.digest)
            await copy_manifest(source, src_repo, target, dst_repo, manifest, backoff=backoff)
            referrers.append((manifest.descriptor(), manifest.data))
        if referrers:
            await w.refer(image.digest, referrers)
            found += len(referrers)
    if found:
        log.info("attachments_copied", repository=dst_repo, digest=top.digest, found=found)
    return found
