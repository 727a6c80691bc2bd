"""A registry-free target: OCI image layouts on disk, one per repository (`oci:/dir`).

`/dir/<repository>/` is an OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`);
tags are `org.opencontainers.image.ref.name` annotations of `index.json` entries, as skopeo and
umoci read them (`skopeo inspect oci:/dir/<repository>:<tag>`). `LayoutStore` offers the same
read and write methods as `RegistryClient`, raising the same errors, so planners and publishers
treat both alike.

Decision: behave exactly like a registry to callers; on disk, never expose partial content.
- Writes are atomic: blobs are written to a temporary file and renamed to their digest once the
  digest is verified; `index.json` is replaced (write + rename) last. A crash leaves at most an
  orphan temporary file in `blobs/`, never a tag pointing at missing content.
- Writes to one layout are serialised (one lock per repository directory); a re-pushed tag
  replaces the old entry.
- Manifests pushed by digest (platform manifests of an index) are blobs only; only tags appear
  in `index.json`.
- File writes of large chunks run in a worker thread so the event loop never waits on the disk.
- `delete_manifest(digest)` is a registry's delete by digest: every ref (tag) naming the digest
  leaves `index.json` (replaced atomically, under the lock), then the blobs only that manifest
  reached (its children, configs, layers) and no remaining ref reaches are removed. Blobs that
  nothing ever referenced are not swept: a publish in flight has written its blobs before its
  tag, and must not lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from containerdisks.oci import safejson
from containerdisks.oci.digest import compute_digest, is_digest, parse_digest
from containerdisks.oci.errors import (
    BlobSizeError,
    BlobUnknownError,
    ContentTooLargeError,
    DigestMismatchError,
    InvalidManifestError,
    ManifestUnknownError,
    OCIError,
    RepositoryUnknownError,
)
from containerdisks.oci.media import Descriptor, Manifest, detect_media_type

__all__ = ["LayoutStore", "LayoutUpload"]

REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
#: Larger blobs are layers: not read as JSON while looking for references.
_MAX_MANIFEST = 4 * 1024 * 1024


class LayoutStore:
    """OCI image layouts under `root`; `repository` is a relative path (`fedora`, `ns/fedora`)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._locks: dict[Path, asyncio.Lock] = {}

    @property
    def host(self) -> str:
        return f"oci:{self.root}"

    async def __aenter__(self) -> LayoutStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # -- paths ----------------------------------------------------------------------------------

    def _dir(self, repository: str) -> Path:
        parts = repository.split("/")
        if not repository or any(p in ("", ".", "..") for p in parts):
            raise OCIError(f"{self.host}: invalid repository {repository!r}")
        return self.root.joinpath(*parts)

    def _subject(self, repository: str, reference: str = "") -> str:
        sep = "@" if is_digest(reference) else ":"
        return f"{self.host}/{repository}{sep + reference if reference else ''}"

    def _blob_unknown(self, repository: str, digest: str) -> BlobUnknownError:
        """What a registry answers for a blob it does not have."""
        subject = self._subject(repository, digest)
        return BlobUnknownError(subject, status=404, code="BLOB_UNKNOWN", message="blob unknown")

    @staticmethod
    def _blob_path(layout: Path, digest: str) -> Path:
        algorithm, hexpart = parse_digest(digest)
        return layout / "blobs" / algorithm / hexpart

    def _lock(self, layout: Path) -> asyncio.Lock:
        return self._locks.setdefault(layout, asyncio.Lock())

    # -- reading --------------------------------------------------------------------------------

    def _index(self, repository: str) -> dict[str, Any]:
        path = self._dir(repository) / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RepositoryUnknownError(
                self._subject(repository),
                status=404,
                code="NAME_UNKNOWN",
                message="no OCI layout here",
            ) from None
        try:
            index = safejson.loads(data)
        except ValueError:
            raise InvalidManifestError(f"{path}: index.json is not JSON") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise InvalidManifestError(f"{path}: index.json is not an image index")
        return index

    def _resolve(self, repository: str, reference: str) -> Descriptor:
        index = self._index(repository)
        subject = self._subject(repository, reference)
        for entry in index.get("manifests", []):
            desc = Descriptor.from_json(entry, subject)
            if (is_digest(reference) and desc.digest == reference) or (
                desc.annotations.get(REF_NAME) == reference
            ):
                return desc
        if is_digest(reference):
            path = self._blob_path(self._dir(repository), reference)
            if path.is_file():
                data = path.read_bytes()
                media_type = detect_media_type(data, None, subject)
                return Descriptor(media_type, reference, len(data))
        raise ManifestUnknownError(
            subject, status=404, code="MANIFEST_UNKNOWN", message="manifest unknown"
        )

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        desc = self._resolve(repository, reference)
        data = self._read_blob(repository, desc.digest)
        return Manifest(desc.media_type, data, desc.digest)

    async def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        try:
            return self._resolve(repository, reference)
        except ManifestUnknownError:
            return None

    def _read_blob(self, repository: str, digest: str, max_size: int | None = None) -> bytes:
        path = self._blob_path(self._dir(repository), digest)
        try:
            size = path.stat().st_size
            if max_size is not None and size > max_size:
                raise ContentTooLargeError(
                    f"{self._subject(repository, digest)}: {size} bytes, more than {max_size}"
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._blob_unknown(repository, digest) from None
        actual = compute_digest(data, parse_digest(digest)[0])
        if actual != digest:
            raise DigestMismatchError(
                self._subject(repository, digest), expected=digest, actual=actual
            )
        return data

    async def get_blob(self, repository: str, digest: str, *, max_size: int) -> bytes:
        return self._read_blob(repository, digest, max_size)

    async def read_blob(
        self, repository: str, digest: str, sink: Callable[[bytes], Awaitable[None]], *, size: int
    ) -> int:
        """Stream a blob of `size` bytes (its descriptor's) into `sink`, verified against
        `digest` at the end; its size. A file of another size raises `BlobSizeError` first."""
        path = self._blob_path(self._dir(repository), digest)
        expected = size
        algorithm = parse_digest(digest)[0]
        hasher = hashlib.new(algorithm)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise self._blob_unknown(repository, digest) from None
        with f:
            stored = os.fstat(f.fileno()).st_size
            if stored != expected:
                raise BlobSizeError(
                    f"{self._subject(repository, digest)}: {stored} bytes, its descriptor "
                    f"says {expected}"
                )
            size = 0
            while chunk := await asyncio.to_thread(f.read, min(1 << 20, expected - size + 1)):
                if size + len(chunk) > expected:  # the file grew while read
                    raise BlobSizeError(
                        f"{self._subject(repository, digest)}: more than the {expected} bytes "
                        "its descriptor says"
                    )
                await asyncio.to_thread(hasher.update, chunk)
                size += len(chunk)
                await sink(chunk)
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if actual != digest:
            raise DigestMismatchError(
                self._subject(repository, digest), expected=digest, actual=actual
            )
        return size

    async def has_blob(self, repository: str, digest: str) -> bool:
        return self._blob_path(self._dir(repository), digest).is_file()

    async def list_tags(self, repository: str) -> list[str]:
        index = self._index(repository)
        tags = {
            e["annotations"][REF_NAME]
            for e in index.get("manifests", [])
            if isinstance(e, dict)
            and isinstance(e.get("annotations"), dict)
            and isinstance(e["annotations"].get(REF_NAME), str)
        }
        return sorted(tags)

    # -- writing --------------------------------------------------------------------------------

    def _ensure_layout(self, layout: Path) -> None:
        (layout / "blobs").mkdir(parents=True, exist_ok=True)
        marker = layout / "oci-layout"
        if not marker.exists():
            _atomic_write(marker, _LAYOUT)
        if not (layout / "index.json").exists():
            _atomic_write(layout / "index.json", b'{"schemaVersion":2,"manifests":[]}')

    def blob_upload(self, repository: str) -> LayoutUpload:
        layout = self._dir(repository)
        self._ensure_layout(layout)
        return LayoutUpload(self, repository, layout)

    async def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        source = self._blob_path(self._dir(from_repository), digest)
        if not source.is_file():
            return False
        layout = self._dir(repository)
        self._ensure_layout(layout)
        target = self._blob_path(layout, digest)
        if target.is_file():
            return True
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            os.link(source, tmp)
        except OSError:
            await asyncio.to_thread(shutil.copyfile, source, tmp)
        os.replace(tmp, target)
        return True

    async def put_blob(
        self, repository: str, data: bytes, *, media_type: str = "application/octet-stream"
    ) -> Descriptor:
        digest = compute_digest(data)
        layout = self._dir(repository)
        self._ensure_layout(layout)
        path = self._blob_path(layout, digest)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, data)
        return Descriptor(media_type, digest, len(data))

    async def put_manifest(
        self, repository: str, reference: str, media_type: str, data: bytes
    ) -> str:
        """Store a manifest; a tag reference also (re)points the tag in `index.json`."""
        digest = compute_digest(data)
        if is_digest(reference) and reference != digest:
            raise DigestMismatchError(
                self._subject(repository, reference), expected=reference, actual=digest
            )
        layout = self._dir(repository)
        async with self._lock(layout):
            await self.put_blob(repository, data)
            if is_digest(reference):
                return digest
            index = self._index(repository)
            entries = [
                e
                for e in index.get("manifests", [])
                if not (
                    isinstance(e, dict) and (e.get("annotations") or {}).get(REF_NAME) == reference
                )
            ]
            entries.append(
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": len(data),
                    "annotations": {REF_NAME: reference},
                }
            )
            index["manifests"] = entries
            index.setdefault("schemaVersion", 2)
            _atomic_write(
                layout / "index.json",
                json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
            )
        return digest

    async def delete_manifest(self, repository: str, digest: str) -> None:
        """Drop every ref to `digest` and the blobs nothing else references (see the module
        docstring); `ManifestUnknownError` when the layout has no such manifest."""
        parse_digest(digest)
        layout = self._dir(repository)
        async with self._lock(layout):
            index = self._index(repository)
            entries = [e for e in index.get("manifests", []) if isinstance(e, dict)]
            kept = [e for e in entries if e.get("digest") != digest]
            blob = self._blob_path(layout, digest)
            if len(kept) == len(entries) and not blob.is_file():
                raise ManifestUnknownError(
                    self._subject(repository, digest),
                    status=404,
                    code="MANIFEST_UNKNOWN",
                    message="manifest unknown",
                )
            if len(kept) != len(entries):
                index["manifests"] = kept
                _atomic_write(
                    layout / "index.json",
                    json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
                )
            still = self._reachable(layout, [str(e.get("digest", "")) for e in kept])
            gone = self._reachable(layout, [digest]) - still
            for d in sorted(gone):
                with contextlib.suppress(FileNotFoundError):
                    self._blob_path(layout, d).unlink()

    def _reachable(self, layout: Path, roots: list[str]) -> set[str]:
        """Every digest reachable from `roots`: indexes' manifests, manifests' config and
        layers (a missing or unreadable blob ends its branch)."""
        seen: set[str] = set()
        todo = [d for d in roots if is_digest(d)]
        while todo:
            d = todo.pop()
            if d in seen:
                continue
            seen.add(d)
            path = self._blob_path(layout, d)
            try:
                if path.stat().st_size > _MAX_MANIFEST:
                    continue  # a layer, not a manifest
                doc = safejson.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict):
                continue
            children, layers = doc.get("manifests"), doc.get("layers")
            refs = [
                *(children if isinstance(children, list) else []),
                doc.get("config"),
                *(layers if isinstance(layers, list) else []),
            ]
            for ref in refs:
                child = ref.get("digest") if isinstance(ref, dict) else None
                if isinstance(child, str) and is_digest(child):
                    todo.append(child)
        return seen


class LayoutUpload:
    """A streamed blob write: `write(chunks)`, then `commit([digest])`; otherwise removed.

    Like `BlobUpload`, it hashes what it writes: `commit()` returns the digest and size it
    computed, so a caller never hashes the same bytes a second time."""

    def __init__(self, store: LayoutStore, repository: str, layout: Path) -> None:
        self._store = store
        self._repository = repository
        self._layout = layout
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self._tmp: Path | None = None
        self.sent = 0
        self.committed = False

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"

    @property
    def size(self) -> int:
        return self.sent

    async def __aenter__(self) -> LayoutUpload:
        tmp_dir = self._layout / "blobs"
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=tmp_dir)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        return self

    async def write(
        self, chunks: AsyncIterator[bytes], *, size: int | None = None, digest: str | None = None
    ) -> None:
        """Write every chunk. `size` and `digest` are accepted for the registry upload's
        surface; a file has no other check, so the bytes are always hashed here."""
        del size, digest
        if self._file is None:
            raise RuntimeError("use 'async with'")
        f = self._file
        # Chunk k is written and hashed in a worker while chunk k + 1 is read; one in flight,
        # so the file and the hash see the chunks in order.
        pending: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(asyncio.to_thread(self._write_one, f, chunk))
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                # the source failed: the worker's write is short, let it end before the file
                # is closed (its own error, if any, is not the one to report)
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)

    def _write_one(self, f: IO[bytes], chunk: bytes) -> None:
        f.write(chunk)
        self._hash.update(chunk)
        self.sent += len(chunk)

    async def commit(self, digest: str | None = None) -> Descriptor:
        """Store the blob as `digest` (default: the digest computed while writing) and return
        its descriptor, digest and size as computed here; another digest is refused."""
        if self._file is None or self._tmp is None:
            raise RuntimeError("use 'async with'")
        digest = self.digest if digest is None else digest
        if digest != self.digest:
            raise DigestMismatchError(
                self._store._subject(self._repository, digest), expected=digest, actual=self.digest
            )
        self._file.close()
        target = LayoutStore._blob_path(self._layout, digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, target)
        self.committed = True
        return Descriptor("application/octet-stream", digest, self.sent)

    async def cancel(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tmp is not None and not self.committed:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            await self.cancel()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
