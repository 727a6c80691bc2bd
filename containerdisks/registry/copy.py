"""Copying an image by digest between stores: index, every child manifest, config, layers.

One job, shared by push (an unchanged arch reused into another registry or repository) and
promote. Decisions:
- A blob the target repository already has (HEAD) is skipped; within one store it is mounted
  from the source repository (no bytes move); otherwise it is streamed from registry to registry
  through a small bounded queue, never through a temporary file, and committed only after the
  source's bytes matched the digest (a mismatch raises before the commit, and the upload is
  deleted at its latest Location: the body goes chunked, so it can end where the bytes did).
- Manifests go up by digest, children before their index, so nothing refers to what the target
  does not hold yet; a manifest the target already has is not copied again. Tags are the
  caller's business, after the copy returned.
- A failed blob copy is retried under the caller's backoff (a new upload each time).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from containerdisks import oci
from containerdisks.oci.media import parse_image_manifest
from containerdisks.registry.stores import Store
from containerdisks.registry.walk import children
from containerdisks.retry import RetryPolicy, retrying

__all__ = ["CopyStats", "copy_blob", "copy_manifest"]

log = structlog.get_logger(__name__)


@dataclass
class CopyStats:
    """What one copy did, blob by blob (for logs and the command's table)."""

    present: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)


async def copy_blob(
    source: Store, src_repo: str, target: Store, dst_repo: str, blob: oci.Descriptor
) -> None:
    """Stream one blob from `source` into `target`, through a small bounded queue (memory stays
    flat whatever the blob's size)."""
    digest = blob.digest
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)

    async def produce() -> None:
        try:
            # raises on a digest mismatch, and on a body longer or shorter than the descriptor
            await source.read_blob(src_repo, digest, queue.put, size=blob.size)
        except BaseException as e:  # handed to the consumer, which re-raises it
            await queue.put(e)
        else:
            await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    producer = asyncio.create_task(produce())
    try:
        async with target.blob_upload(dst_repo) as upload:
            # read_blob checks the digest; the upload need not hash the bytes a second time.
            # No size: a chunked body can end early when the source fails (a digest mismatch),
            # so the registry answers with the upload's latest Location and the cancel deletes
            # it; a Content-Length body would be cut off and the partial upload kept.
            await upload.write(chunks(), digest=digest)
            await upload.commit(digest)
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
    log.info("blob_copied", digest=digest, repository=dst_repo, host=target.host)


async def _bring_blob(
    source: Store,
    src_repo: str,
    target: Store,
    dst_repo: str,
    blob: oci.Descriptor,
    *,
    backoff: RetryPolicy,
    stats: CopyStats,
) -> None:
    digest = blob.digest
    if await target.has_blob(dst_repo, digest):
        stats.present.append(digest)
        return
    if source is target and await target.mount_blob(dst_repo, digest, src_repo):
        stats.mounted.append(digest)
        return
    await retrying(
        f"copy of {digest} to {target.host}/{dst_repo}",
        functools.partial(copy_blob, source, src_repo, target, dst_repo, blob),
        backoff,
        kind="restream",
    )
    stats.copied.append(digest)


async def _has_manifest(target: Store, repository: str, digest: str) -> bool:
    try:
        return await target.head_manifest(repository, digest) is not None
    except oci.NotFoundError:  # a layout directory not created yet
        return False


async def copy_manifest(
    source: Store,
    src_repo: str,
    target: Store,
    dst_repo: str,
    manifest: oci.Manifest,
    *,
    backoff: RetryPolicy,
    stats: CopyStats | None = None,
) -> CopyStats:
    """Make `manifest` (read from `source`/`src_repo`) and all it refers to present in
    `target`/`dst_repo` by digest; untagged there."""
    stats = stats if stats is not None else CopyStats()
    if source is target and src_repo == dst_repo:
        return stats
    if await _has_manifest(target, dst_repo, manifest.digest):
        return stats
    what = f"{source.host}/{src_repo}@{manifest.digest}"
    if manifest.is_index:
        async for _, sub in children(source, src_repo, manifest, what):
            await copy_manifest(
                source, src_repo, target, dst_repo, sub, backoff=backoff, stats=stats
            )
    else:
        image = parse_image_manifest(manifest, what)
        for blob in (image.config, *image.layers):
            await _bring_blob(
                source, src_repo, target, dst_repo, blob, backoff=backoff, stats=stats
            )
    await target.put_manifest(dst_repo, manifest.digest, manifest.media_type, manifest.data)
    stats.manifests.append(manifest.digest)
    return stats
