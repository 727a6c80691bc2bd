"""Unpacking: the multi-member decompressors and the tar reader, shared by push and verify's pull.

Push decompresses what upstream serves (gzip, xz) through `pipeline.stages.decompress`; verify's
pull decompresses a registry layer (gzip, zstd, or none) and reads the tar inside it to the one
file under `disk/`. Both feed bytes into the same decoders here; this module does no I/O and knows
no event loop, so a caller may run it inline or in a worker thread.

Decisions:
- Multi-member: gzip members and xz streams follow one another (pigz, `cat a.gz b.gz`), and so do
  zstd frames; a member that starts but does not end is a truncated download: `UnpackError`.
- Bounded steps: input is hostile until checked (upstream before its checksum, a registry that
  may not be ours). gzip and xz decode through `max_length`, the rest of the input kept for the
  next call, so each step yields at most `limit` bytes and the next step runs only when the
  caller asks (`Decoder.steps`); zstd has no `max_length`, so it decodes through a stream writer
  with a bounded `write_size` whose every write goes to the caller (`Decoder.feed`). A small bomb
  never becomes one huge buffer; the caller sets the size limit.
- gzip is isal (pinned in the dependencies), as the compressor in `stages` is.
- The tar reader is written here because `tarfile` reads only from a blocking file object, and a
  containerdisk needs little of it: regular files, directories, PAX and GNU long names, sizes in
  octal or base-256. Nothing is created from member names: the one file under `disk/` is written
  to the file the caller gave; later layers win, as in an overlay. A PAX or GNU long-name record
  larger than `MAX_META` is refused, so memory stays bounded whatever the layer holds.
"""

from __future__ import annotations

import lzma
import os
from collections.abc import Callable, Iterator
from typing import IO, Any, Literal, cast

import zstandard
from isal import isal_zlib

__all__ = [
    "DECODE_ERRORS",
    "MAX_META",
    "MAX_OTHER",
    "MAX_TRAILER",
    "Decoder",
    "Kind",
    "Stepped",
    "TarDisk",
    "UnpackError",
    "decoder",
]

#: What a decoder undoes: a compression, or none.
Kind = Literal["gzip", "xz", "zstd", "none"]
Emit = Callable[[bytes], object]

MAX_META = 1 << 20  # the largest PAX or GNU long-name record
MAX_OTHER = 1 << 20  # the largest member outside disk/ (a containerdisk has none)
MAX_TRAILER = 1 << 20  # zero bytes accepted after the end-of-archive block (record padding)
_BLOCK = 512

_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment] # stubs call it an instance
#: What a corrupt stream raises from the libraries underneath, besides `UnpackError`.
DECODE_ERRORS: tuple[type[Exception], ...] = (zstandard.ZstdError, _ISAL_ERROR)


class UnpackError(ValueError):
    """A stream cannot be unpacked (truncated, not a tar, a disk KubeVirt refuses); one line."""


class Decoder:
    """Undoes one compression over a stream fed in pieces; multi-member; bounded output."""

    def feed(self, data: bytes, emit: Emit) -> None:
        """Decode `data`, calling `emit` with chunks of at most `limit` bytes."""
        raise NotImplementedError

    def finish(self) -> None:
        """The input ended: `UnpackError` if it ended inside a member."""


class Stepped(Decoder):
    """gzip or xz, through `max_length`: each step decodes at most `limit` bytes."""

    def __init__(self, kind: Literal["gzip", "xz"], *, limit: int, name: str | None = None) -> None:
        self._kind = kind
        self._limit = limit
        self._name = name
        self._d: Any = self._new()
        self._open = False

    def _new(self) -> Any:
        if self._kind == "gzip":
            return isal_zlib.decompressobj(wbits=31)
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def steps(self, data: bytes) -> Iterator[bytes]:
        """Decode `data` one bounded step per item; exhaust it before feeding more."""
        gzip = self._kind == "gzip"
        while True:
            if data:
                self._open = True
            out: bytes = self._d.decompress(data, self._limit)
            if out:
                yield out
            if self._d.eof:
                data, self._open = self._d.unused_data, False
                self._d = self._new()
                if not data:
                    return
                continue
            # zlib hands back the input it did not use; lzma keeps it inside.
            data = self._d.unconsumed_tail if gzip else b""
            # Output may be pending though no input is left: zlib cannot tell (a full step may
            # have left some behind); lzma says so.
            pending = len(out) == self._limit if gzip else not self._d.needs_input
            if not data and not pending:
                return

    def feed(self, data: bytes, emit: Emit) -> None:
        for out in self.steps(data):
            emit(out)

    def finish(self) -> None:
        if self._open:
            what = f"truncated {self._kind} stream"
            raise UnpackError(f"{self._name}: {what}" if self._name else what)


class _Emitter:
    """The file a zstd stream writer writes to: each write goes to `emit`."""

    def __init__(self) -> None:
        self.emit: Emit = lambda _: None

    def write(self, data: Any) -> int:
        self.emit(data)
        return len(data)


class _Zstd(Decoder):
    def __init__(self, limit: int) -> None:
        self._sink = _Emitter()
        # The writer decodes frame after frame and writes at most `limit` bytes at a time.
        self._w = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], self._sink), write_size=limit
        )

    def feed(self, data: bytes, emit: Emit) -> None:
        self._sink.emit = emit
        self._w.write(data)


class _Plain(Decoder):
    def feed(self, data: bytes, emit: Emit) -> None:
        emit(data)


def decoder(kind: Kind, *, limit: int, name: str | None = None) -> Decoder:
    """A decoder for `kind` handing on at most `limit` bytes at a time (`none` passes input on
    as it came); `name` starts its error messages."""
    if kind == "zstd":
        return _Zstd(limit)
    if kind == "none":
        return _Plain()
    return Stepped(kind, limit=limit, name=name)


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    while data:
        length_text, _, _ = data.partition(b" ")
        length = int(length_text)
        record = data[len(length_text) + 1 : length]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        data = data[length:]
    return out


class TarDisk:
    """A push parser for a tar stream that writes the one regular file under `disk/` to `out`.

    `found` lists the files seen under `disk/` (a containerdisk has exactly one); `disk_bytes`
    counts the last one's bytes, cut at `max_bytes`. Errors start with `name`.
    """

    def __init__(self, out: IO[bytes], name: str, max_bytes: int | None = None) -> None:
        self._out = out
        self._name = name
        self._max = max_bytes
        self._buf = bytearray()
        self._left = 0  # bytes of the current member's data still to come
        self._pad = 0
        self._sink: Callable[[memoryview], object] | None = None
        self._meta: bytearray | None = None  # collecting a PAX or GNU long-name member
        self._meta_kind = b""
        self._pending: dict[str, str] = {}
        self._ended = False
        self._trailer = 0  # bytes after the end-of-archive block
        self.found: list[str] = []
        self.disk_bytes = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._ended:
                self._after_end(view)
                return
            if self._left:
                n = min(self._left, len(view))
                self._data(view[:n])
                view = view[n:]
                self._left -= n
                if not self._left:
                    self._end_member()
                continue
            if self._pad:
                n = min(self._pad, len(view))
                view, self._pad = view[n:], self._pad - n
                continue
            need = _BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == _BLOCK:
                header, self._buf = bytes(self._buf), bytearray()
                self._header(header)

    def _after_end(self, view: memoryview) -> None:
        self._trailer += len(view)
        if view.tobytes().count(0) != len(view):
            raise UnpackError(f"{self._name}: data after the end of the tar archive")
        if self._trailer > MAX_TRAILER:
            raise UnpackError(
                f"{self._name}: more than {MAX_TRAILER} bytes after the end of the tar archive"
            )

    def _data(self, chunk: memoryview) -> None:
        if self._meta is not None:
            if len(self._meta) + len(chunk) > MAX_META:
                raise UnpackError(f"{self._name}: a tar header record over {MAX_META} bytes")
            self._meta += chunk
        elif self._sink is not None:
            self.disk_bytes += len(chunk)
            if self._max is not None and self.disk_bytes > self._max:
                raise UnpackError(
                    f"{self._name}: the disk is larger than max_image_bytes ({self._max} bytes)"
                )
            self._sink(chunk)

    def _end_member(self) -> None:
        if self._meta is not None:
            meta, kind, self._meta = bytes(self._meta), self._meta_kind, None
            if kind == b"x":
                self._pending.update(_pax(meta))
            elif kind == b"L":
                self._pending["path"] = meta.split(b"\0", 1)[0].decode("utf-8", "replace")
        self._sink = None

    def _header(self, header: bytes) -> None:
        if header == b"\0" * _BLOCK:
            self._ended = True
            return
        try:
            stored = _number(header[148:156])
        except ValueError:
            stored = -1
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise UnpackError(f"{self._name}: not a tar archive (bad header checksum)")
        kind = header[156:157] or b"0"
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar" and header[345] != 0:
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            name = f"{prefix}/{name}"
        size = _number(header[124:136])
        pending, self._pending = self._pending, {}
        if kind in (b"x", b"L"):
            self._meta, self._meta_kind = bytearray(), kind
            self._pending = pending  # a long name may follow a PAX header and vice versa
        elif kind == b"g":
            self._meta, self._meta_kind = None, kind
        else:
            name = pending.get("path", name)
            size = int(pending.get("size", size))
            path = name.removeprefix("./").lstrip("/")
            if path.startswith("disk/") and path.rstrip("/") != "disk":
                if kind not in (b"0", b"\0", b"7"):
                    raise UnpackError(f"{self._name}: {path} is not a regular file")
                if "/" in path.removeprefix("disk/"):
                    raise UnpackError(f"{self._name}: {path}: disk/ holds a subdirectory")
                self.found.append(path)
                self._restart()
                self.disk_bytes = 0
                self._sink = self._out.write
            elif size > MAX_OTHER:
                raise UnpackError(
                    f"{self._name}: {path or name} is {size} bytes; outside disk/ a containerdisk "
                    f"holds nothing over {MAX_OTHER}"
                )
        self._left = size
        self._pad = -size % _BLOCK
        if not size:
            self._end_member()

    def _restart(self) -> None:
        # Truncated only when it holds bytes: ext4 (auto_da_alloc) makes close() of a file
        # truncated to zero allocate and submit its whole dirty data, so an empty file is left
        # alone (close of a 1 GiB disk: 0.4-0.6 s less).
        if self._out.seek(0, os.SEEK_END):
            self._out.seek(0)
            self._out.truncate()

    def finish(self) -> None:
        if self._left or self._buf:
            raise UnpackError(f"{self._name}: the tar stream is truncated")
