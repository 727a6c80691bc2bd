"""Promoting one verified entry: copy exactly the digest verify passed, then write its tags.

One job: for one results-file entry at stage `verify`, check that its staging tags still name
the verified digest, copy that digest (index, every arch manifest, config, layer) into the target
repository (registry/copy.py: mounted within one registry, streamed otherwise, present blobs
skipped), and only then write the tags, in the recorded order (timestamp tag, unique tags,
`<version>`, `latest`), so moving tags move last and a failed copy moves no tag.

Decisions:
- The digest is the one verify recorded (`Digest`); a results file without one (medius's) has
  `Tags[0]` resolved once in the source, and every other staging tag must agree with it.
- A staging tag that is gone or names another digest fails the entry: promote never copies
  bytes verify did not pass. The check is repeated after the copy, just before the tags.
- An `oci:` target takes OCI media types only (as push writes it; skopeo reads nothing else
  from a layout): a Docker-typed image fails the entry, since converting would change the digest.
- Signatures and attestations travel with the image: the `.sig`/`.att` tags and the referrers
  (with their tag-schema index) of the digest and of every manifest it lists are copied after
  the image and before its tags (registry/attach.py). With a public key configured
  (`verify_key`), an image whose signature or provenance does not check in the source is
  refused (also in a dry run), and the copies are checked again in the target before any tag.
- Every failure is one line naming the entry and what failed (a PromoteError).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from containerdisks import oci
from containerdisks.engine.results import Result, recorded_digest
from containerdisks.registry.attach import check_image, copy_attachments
from containerdisks.registry.copy import CopyStats, copy_manifest
from containerdisks.registry.stores import Place
from containerdisks.retry import RetryPolicy
from containerdisks.signing import PublicKey, SigningError

__all__ = ["Candidate", "PromoteError", "Promoter", "Promotion"]

log = structlog.get_logger(__name__)

_OCI_TYPES = frozenset({oci.OCI_INDEX, oci.OCI_MANIFEST})


class PromoteError(Exception):
    """Promoting an entry failed; the message is one line naming what and why."""


@dataclass(frozen=True)
class Candidate:
    """A results-file entry that verify passed."""

    key: str  # "name:version"
    name: str
    result: Result


@dataclass
class Promotion:
    """What promoting one entry did (or would do): its digest, tags, copy counts, error."""

    key: str
    digest: str = ""
    tags: list[str] = field(default_factory=list)
    error: str = ""
    stats: CopyStats = field(default_factory=CopyStats)
    seconds: float = 0.0
    attachments: int = 0  # signatures, attestations and referrers copied with the image

    def record(self, prior: Result) -> Result:
        """The results-file record after this promote (tags as verify recorded them)."""
        return prior.after("promote", self.error, self.digest)


class Promoter:
    def __init__(
        self, source: Place, target: Place, backoff: RetryPolicy, key: PublicKey | None = None
    ) -> None:
        """`key`: when given, only images signed and attested with it are promoted."""
        self.source = source
        self.target = target
        self.backoff = backoff
        self.key = key

    async def _check_signed(self, c: Candidate, place: Place, digest: str) -> None:
        if self.key is None:
            return
        repo = place.repo(c.name)
        top = await place.store.get_manifest(repo, digest)
        try:
            await check_image(place.store, repo, top, self.key)
        except SigningError as e:
            raise PromoteError(f"{c.key}: refused, not signed with {self.key.name}: {e}") from None

    async def resolve(self, c: Candidate) -> Promotion:
        """The verified digest and the tags to write; raises PromoteError when a staging tag
        moved since verify."""
        tags = c.result.bare_tags()
        if not tags:
            raise PromoteError(f"{c.key}: no tags recorded")
        digest = await recorded_digest(c.result, self.source.store, self.source.repo(c.name))
        if digest is None:
            where = self.source.where(c.name, tags[0])
            raise PromoteError(f"{c.key}: staging tag {where} not found")
        await self._check_tags(c, tags, digest)
        await self._check_signed(c, self.source, digest)
        return Promotion(c.key, digest, tags)

    async def promote(self, c: Candidate, outcome: Promotion) -> Promotion:
        """Copy `outcome.digest` with all it refers to, then write `outcome.tags` in order."""
        started = time.monotonic()
        src_repo, dst_repo = self.source.repo(c.name), self.target.repo(c.name)
        manifest = await self.source.store.get_manifest(src_repo, outcome.digest)
        if self.target.is_layout and manifest.media_type not in _OCI_TYPES:
            raise PromoteError(
                f"{c.key}: {self.target.spec} holds OCI media types only, and "
                f"{outcome.digest} is {manifest.media_type} (promote copies by digest, "
                "it never converts)"
            )
        outcome.stats = await copy_manifest(
            self.source.store,
            src_repo,
            self.target.store,
            dst_repo,
            manifest,
            backoff=self.backoff,
        )
        outcome.attachments = await copy_attachments(
            self.source.store,
            src_repo,
            self.target.store,
            dst_repo,
            manifest,
            backoff=self.backoff,
        )
        await self._check_signed(c, self.target, outcome.digest)
        await self._check_tags(c, outcome.tags, outcome.digest)
        for tag in outcome.tags:
            await self.target.store.put_manifest(dst_repo, tag, manifest.media_type, manifest.data)
            log.info("promoted_tag", entry=c.key, tag=tag, digest=manifest.digest)
        outcome.seconds = time.monotonic() - started
        log.info(
            "promoted",
            entry=c.key,
            digest=manifest.digest,
            target=self.target.where(c.name),
            mounted=len(outcome.stats.mounted),
            copied=len(outcome.stats.copied),
            present=len(outcome.stats.present),
            attachments=outcome.attachments,
            seconds=round(outcome.seconds, 2),
        )
        return outcome

    async def _head(self, c: Candidate, tag: str) -> str:
        where = self.source.where(c.name, tag)
        head = await self.source.store.head_manifest(self.source.repo(c.name), tag)
        if head is None:
            raise PromoteError(f"{c.key}: staging tag {where} not found")
        return head.digest

    async def _check_tags(self, c: Candidate, tags: list[str], digest: str) -> None:
        for tag in tags:
            now = await self._head(c, tag)
            if now != digest:
                where = self.source.where(c.name, tag)
                raise PromoteError(
                    f"{c.key}: staging tag {where} moved since verify: now {now}, verified {digest}"
                )


def describe_error(c: Candidate, target: Place, error: Exception) -> str:
    """One line for the results file's `Err`."""
    if isinstance(error, PromoteError):
        return str(error)
    if isinstance(error, oci.OCIError):
        return f"{c.key}: promote to {target.where(c.name)}: {error}"
    return f"{c.key}: promote to {target.where(c.name)}: {type(error).__name__}: {error}"
