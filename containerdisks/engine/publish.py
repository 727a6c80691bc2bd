"""Publishing one planned entry: build what changed in one streaming pass, reuse the rest, tag.

The entry's shape (config core per arch, tags) is its `EntrySpec` (engine/spec.py), the same
value the plan compared with what is published.

docs/architecture.md "How a push flows", step 5:
- A `build` arch streams upstream bytes -> checksum -> (decompress) -> header inspection ->
  tar -> (compress) -> target in one pass, with the layer digest and diff_id computed on the way.
  A disk whose header `diskcheck` refuses (a qcow2 naming a backing or data file, ...) fails the
  arch before any of its bytes are spooled or sent; that is not retried. With a known size and no
  decompression nothing touches the disk; otherwise the (decompressed) image is spooled to the
  work dir, verified, then streamed from the same descriptor (a new file, `O_EXCL|O_NOFOLLOW`,
  0600; never reopened by name); the spool file is always removed. The layer upload is
  committed only after the upstream checksum matched; on a mismatch it is cancelled, so nothing
  is published.
- Sizes are bounded before bytes flow: the download by `max_image_bytes` and the size the
  metadata declares (a larger `Content-Length` is refused before the upload starts; a longer
  stream is cut), the decompressed disk by `max_image_bytes`; the upload of a cut stream is
  cancelled, never committed.
- A `build` whose upstream bytes did not change reuses the published layer (no download): only
  the config and manifest are new.
- A `reuse` arch keeps its published manifest as is (same store: mounted into the target
  repository when that differs).
- Platform manifests are pushed by digest, then the index (or the single manifest) under each
  tag, in the tag policy's order (containerdisks/tags.py): the timestamp tag (UTC, taken once
  when the entry's publish starts), the unique tags, `<version>`, `latest` — moving tags last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from containerdisks import oci
from containerdisks.api import Artifact
from containerdisks.engine.plan import ArchPlan, EntryPlan
from containerdisks.engine.spec import ArchSpec, EntrySpec
from containerdisks.pipeline.diskcheck import inspected
from containerdisks.pipeline.image import (
    MEDIA_TYPES,
    LayerCompression,
    MediaFamily,
    config_bytes,
    index_bytes,
    layer_media_type,
    manifest_bytes,
)
from containerdisks.pipeline.stages import (
    BLOCK,
    Chunks,
    Digest,
    SizeLimitError,
    capped,
    compress,
    decompress,
    hashed,
    tar_disk,
)
from containerdisks.provenance import provenance_statement
from containerdisks.registry.attach import attach, image_digests, is_signed
from containerdisks.registry.copy import copy_manifest
from containerdisks.registry.stores import Place
from containerdisks.retry import RetryPolicy, retrying
from containerdisks.signing import Signer
from containerdisks.upstream import HttpUpstream
from containerdisks.workdir import WorkDirError, own_work_dir

__all__ = ["PublishError", "Publisher"]

log = structlog.get_logger(__name__)


class PublishError(Exception):
    """Publishing an entry failed; the message is one line naming what and why."""


@dataclass(frozen=True)
class _Built:
    descriptor: oci.Descriptor  # the platform manifest, with its platform
    manifest: bytes


class Publisher:
    def __init__(
        self,
        *,
        upstream: HttpUpstream,
        source: Place,
        target: Place,
        family: MediaFamily,
        compression: LayerCompression,
        work_dir: Path,
        max_spool_bytes: int,
        max_virtual_size: int,
        max_image_bytes: int,
        backoff: RetryPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        signer: Signer | None = None,
        identity: str = "",
    ) -> None:
        """`signer`: signs and attests what is published, naming `<identity>/<name>` as the
        signed repository; None signs nothing."""
        self.upstream = upstream
        self.source = source
        self.target = target
        self.family = family
        self.compression = compression
        self.work_dir = work_dir
        self.max_spool_bytes = max_spool_bytes
        self.max_virtual_size = max_virtual_size
        self.max_image_bytes = max_image_bytes
        self.backoff = backoff or RetryPolicy.for_registry()
        self.clock = clock
        self.signer = signer
        self.identity = identity

    async def publish(self, spec: EntrySpec, plan: EntryPlan) -> tuple[list[str], str]:
        """Publish the entry `spec` describes as `plan` says; return the tags written, in
        order, and the digest they point to (what verify pulls and promote copies)."""
        tags = spec.tags_at(self.clock())
        repo = self.target.repo(spec.name)
        if all(row.action == "retag" for row in plan.arches):
            return await self._retag(spec, plan)
        built: list[_Built] = []
        for want, row in zip(spec.arches, plan.arches, strict=True):
            if row.action == "reuse" and row.published_digest:
                built.append(await self._reuse(spec, want, row))
            else:
                built.append(await self._build(spec, want, row))
        types = MEDIA_TYPES[self.family]
        if len(built) == 1:
            top_type, top = types["manifest"], built[0].manifest
        else:
            top_type, top = types["index"], index_bytes(self.family, [b.descriptor for b in built])
        if self.signer is not None:  # stored by digest and signed before any tag names it
            digest = await self.target.store.put_manifest(
                repo, oci.compute_digest(top), top_type, top
            )
            await self.sign(spec, oci.Manifest(top_type, top, digest))
        digest = ""
        for tag in tags:
            digest = await self.target.store.put_manifest(repo, tag, top_type, top)
            log.info("tagged", entry=spec.key, tag=tag, digest=digest)
        return tags, digest

    async def _retag(self, spec: EntrySpec, plan: EntryPlan) -> tuple[list[str], str]:
        """Content is current; point the tags that drifted at what `<version>` points to."""
        top = await self.source.store.get_manifest(self.source.repo(spec.name), spec.version)
        repo = self.target.repo(spec.name)
        if self.signer is not None:
            await copy_manifest(
                self.source.store,
                self.source.repo(spec.name),
                self.target.store,
                repo,
                top,
                backoff=self.backoff,
            )
            await self.sign(spec, top)
        written = []
        for tag in plan.tags:
            head = await self.target.store.head_manifest(repo, tag)
            if head is None or head.digest != top.digest:
                await self.target.store.put_manifest(repo, tag, top.media_type, top.data)
                written.append(tag)
                log.info("retagged", entry=spec.key, tag=tag, digest=top.digest)
        return written, top.digest

    # -- signing --------------------------------------------------------------------------------

    async def sign(self, spec: EntrySpec, top: oci.Manifest) -> int:
        """Sign `top` (in the target) and every manifest it lists, and attach the entry's
        provenance to each; returns the registry writes it took (0: all was there)."""
        if self.signer is None:
            return 0
        repo = self.target.repo(spec.name)
        images = await image_digests(self.target.store, repo, top)
        statement = provenance_statement(
            [i.digest for i in images],
            name=spec.name,
            version=spec.version,
            source=spec.entry.item.source,
            artifacts=[a.artifact for a in spec.arches],
        )
        return await attach(
            self.target.store,
            repo,
            images,
            signer=self.signer,
            identity=f"{self.identity}/{spec.name}",
            provenance=statement,
        )

    async def ensure_signed(self, spec: EntrySpec, digest: str) -> int:
        """For an unchanged entry: one HEAD when `digest` is signed already; otherwise sign it
        where the target holds it."""
        if self.signer is None:
            return 0
        repo = self.target.repo(spec.name)
        if await is_signed(self.target.store, repo, digest):
            return 0
        try:
            top = await self.target.store.get_manifest(repo, digest)
        except oci.NotFoundError:
            return 0  # published in the source only: nothing of ours to sign in the target
        return await self.sign(spec, top)

    # -- reuse ----------------------------------------------------------------------------------

    async def _reuse(self, spec: EntrySpec, want: ArchSpec, row: ArchPlan) -> _Built:
        """Keep the published manifest of an unchanged arch; bring it into the target if needed:
        blobs are mounted within one registry and streamed from registry to registry otherwise,
        never downloaded from upstream again."""
        assert row.published_digest is not None
        src_repo = self.source.repo(spec.name)
        manifest = await self.source.store.get_manifest(src_repo, row.published_digest)
        descriptor = manifest.descriptor(want.platform)
        await copy_manifest(
            self.source.store,
            src_repo,
            self.target.store,
            self.target.repo(spec.name),
            manifest,
            backoff=self.backoff,
        )
        log.info("reused", entry=spec.key, arch=row.arch, digest=manifest.digest)
        return _Built(descriptor, manifest.data)

    # -- build ----------------------------------------------------------------------------------

    async def _build(self, spec: EntrySpec, want: ArchSpec, row: ArchPlan) -> _Built:
        artifact = want.artifact
        repo = self.target.repo(spec.name)
        layer_type = layer_media_type(self.family, self.compression)
        reused = None
        if row.layer is not None and row.diff_id is not None:
            reused = await self._existing_layer(spec, row.layer, layer_type)
        if reused is not None and row.diff_id is not None:
            layer, diff_id = reused, row.diff_id
        else:
            # A transient failure mid-stream (upstream or registry) restreams the arch.
            layer, diff_id = await retrying(
                f"layer of {spec.key} {artifact.arch}",
                lambda: self._stream_layer(spec, artifact, layer_type),
                self.backoff,
                kind="restream",
            )
        config = config_bytes(want.core, diff_id)
        config_desc = await self.target.store.put_blob(repo, config)
        manifest = manifest_bytes(self.family, config_desc, layer)
        media_type = MEDIA_TYPES[self.family]["manifest"]
        digest = oci.compute_digest(manifest)
        pushed = await self.target.store.put_manifest(repo, digest, media_type, manifest)
        log.info("built", entry=spec.key, arch=artifact.arch, digest=pushed)
        return _Built(oci.Descriptor(media_type, digest, len(manifest), want.platform), manifest)

    async def _existing_layer(
        self, spec: EntrySpec, published: oci.Descriptor, layer_type: str
    ) -> oci.Descriptor | None:
        """The published layer, made present in the target repository, or None to rebuild."""
        repo = self.target.repo(spec.name)
        src_repo = self.source.repo(spec.name)
        present = await self.target.store.has_blob(repo, published.digest)
        if not present and self.source.store is self.target.store:
            present = await self.target.store.mount_blob(repo, published.digest, src_repo)
        if not present:
            return None
        log.info("layer_reused", entry=spec.key, digest=published.digest)
        return oci.Descriptor(layer_type, published.digest, published.size)

    async def _stream_layer(
        self, spec: EntrySpec, artifact: Artifact, layer_type: str
    ) -> tuple[oci.Descriptor, str]:
        repo = self.target.repo(spec.name)
        started = time.monotonic()
        async with self.upstream.download(artifact.url) as dl:
            upstream_digest = Digest(artifact.algorithm)
            limit = self._download_limit(artifact)
            if dl.size is not None and dl.size > limit[0]:
                raise PublishError(f"{artifact.url}: Content-Length {dl.size} {_over(limit)}")
            raw = hashed(_limited(dl.chunks, "download", limit, artifact), upstream_digest)
            spool: _Spool | None = None
            try:
                if artifact.compression is None and dl.size is not None:
                    size, body = dl.size, self._inspected(raw, artifact)
                else:
                    source = raw
                    if artifact.compression is not None:
                        source = _limited(
                            _decompressed(raw, artifact),
                            "decompressed image",
                            (self.max_image_bytes, "max_image_bytes"),
                            artifact,
                        )
                    spool = await self._spool(spec, artifact, self._inspected(source, artifact))
                    size = spool.size
                    _verify(artifact, upstream_digest)  # before a single byte is uploaded
                    body = _read_file(spool)  # through the descriptor that wrote the bytes
                # The upload hashes what it sends (the layer digest); without compression
                # that is the tar itself, so the diff_id needs no hash of its own. With
                # compression the diff_id is hashed beside each block's compression.
                diff = Digest() if self.compression != "none" else None
                async with self.target.store.blob_upload(repo) as upload:
                    await upload.write(compress(tar_disk(size, body), self.compression, diff))
                    _verify(artifact, upstream_digest)  # commit only verified bytes
                    layer = await upload.commit()  # the digest and size the upload computed
                layer_digest, layer_size = layer.digest, layer.size
                diff_id = diff.digest if diff is not None else layer_digest
            finally:
                if spool is not None:
                    spool.remove()
        log.info(
            "layer_pushed",
            entry=spec.key,
            arch=artifact.arch,
            downloaded=upstream_digest.size,
            disk=size,
            layer=layer_size,
            seconds=round(time.monotonic() - started, 2),
        )
        return oci.Descriptor(layer_type, layer_digest, layer_size), diff_id

    def _inspected(self, disk: Chunks, artifact: Artifact) -> Chunks:
        """The disk bytes, passed on once their header is inspected (`diskcheck`)."""
        return inspected(
            disk, self.max_virtual_size, lambda why: PublishError(f"{artifact.url}: {why}")
        )

    def _download_limit(self, artifact: Artifact) -> tuple[int, str]:
        """The most bytes the download may bring, and the name of that limit."""
        if artifact.size is not None and artifact.size < self.max_image_bytes:
            return artifact.size, "the size the upstream metadata declares"
        return self.max_image_bytes, "max_image_bytes"

    async def _spool(self, spec: EntrySpec, artifact: Artifact, source: Chunks) -> _Spool:
        """Write `source` to a new file in the work dir (bounded); the caller removes it.

        The file is created `O_EXCL|O_NOFOLLOW`, mode 0600, so nothing planted at its name is
        written through, and it is read back through the same descriptor: a file swapped in
        under its name after the checksum matched is never what gets uploaded.
        """
        try:
            own_work_dir(self.work_dir)
        except WorkDirError as e:
            raise PublishError(str(e)) from None
        path = self.work_dir / f"{spec.name}-{artifact.arch}-{uuid.uuid4().hex}.spool"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise PublishError(f"spool file {path}: {e.strerror or e}") from None
        spool = _Spool(path, fd)
        try:
            async for chunk in source:
                if spool.size + len(chunk) > self.max_spool_bytes:
                    raise PublishError(
                        f"{artifact.url}: image larger than max_spool_bytes "
                        f"({self.max_spool_bytes})"
                    )
                await asyncio.to_thread(_write_all, fd, chunk)
                spool.size += len(chunk)
        except BaseException:
            spool.remove()
            raise
        return spool


@dataclass
class _Spool:
    """A spool file: its name (for cleanup only) and the descriptor its bytes are read through."""

    path: Path
    fd: int
    size: int = 0

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _over(limit: tuple[int, str]) -> str:
    return f"is larger than {limit[1]} ({limit[0]} bytes)"


async def _limited(source: Chunks, what: str, limit: tuple[int, str], artifact: Artifact) -> Chunks:
    """`capped`, failing with one line naming the URL and the limit."""
    try:
        async for chunk in capped(source, limit[0], what):
            yield chunk
    except SizeLimitError:
        raise PublishError(f"{artifact.url}: {what} {_over(limit)}") from None


def _decompressed(raw: Chunks, artifact: Artifact) -> Chunks:
    assert artifact.compression is not None
    return _named_errors(decompress(raw, artifact.compression), artifact.url)


async def _named_errors(source: Chunks, url: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in source:
            yield chunk
    except (ValueError, EOFError, OSError) as e:
        raise PublishError(f"{url}: cannot decompress: {e}") from None


async def _read_file(spool: _Spool) -> AsyncIterator[bytes]:
    """The spool's bytes, by `pread` on its own descriptor (never reopened by name); the spool
    keeps the descriptor and closes it."""
    offset = 0
    while offset < spool.size:
        chunk = await asyncio.to_thread(os.pread, spool.fd, min(BLOCK, spool.size - offset), offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


def _verify(artifact: Artifact, digest: Digest) -> None:
    got = digest.hexdigest()
    if got != artifact.checksum:
        raise PublishError(
            f"{artifact.url}: checksum mismatch: expected {artifact.algorithm} "
            f"{artifact.checksum}, got {got}"
        )
