"""Inspecting a disk image's header: is it safe to publish and to boot?

One job: given the first bytes of a disk image (after decompression), say whether it may go on.
A qcow2 can name other files (a backing file, an external data file) that qemu opens on the host
that boots it, and can be encrypted, so that what we publish is not what a cluster can boot.
`refusal(head, max_virtual_size)` answers with one line naming the header field, or None;
`disk_format(head)` says how qemu must open the bytes; `inspected()` is the streaming stage that
holds back the first `HEAD` bytes until they have been inspected. Sans-I/O: bytes in, answers
out; the format is qemu's docs/interop/qcow2.txt.

Decisions:
- Only qcow2 (magic `QFI\\xfb`) is parsed; every other image is raw bytes to us and is to be
  opened as `raw`, so its bytes are never taken for a format that names files (VMDK extents,
  QED or VHDX parents). qcow version 1 and unknown versions are refused: they share the magic.
- Refused: a backing file (`backing_file_offset` or `backing_file_size` non-zero), an external
  data file (incompatible bit 2, or a data-file-name header extension), encryption
  (`crypt_method` AES or LUKS, or a full-disk-encryption header extension), incompatible feature
  bits qemu's spec does not define (bits 5-63; dirty, corrupt, data file, compression type and
  extended L2 are known), and a virtual `size` above `max_virtual_size`. The first of these
  found, in that order, is the one line; a backing file is named as soon as the 72 bytes every
  version has are in, before anything else of a malformed header is looked at.
- The head is bounded (`HEAD`, 64 KiB): the header and the header extensions qemu-img writes
  fit in it many times over. Extensions are walked as qemu walks them (to an end marker, within
  the first cluster); a walk that would need bytes beyond the head, or a header cut short, is
  refused rather than guessed: an extension we did not see could name a data file. So is a
  `cluster_bits` qemu does not open (outside 9..21): it says where the extension area ends.
- Strings from the image are shown with `repr()` and cut to 200 characters: one line, no control
  characters, whatever the image holds.
- The stage refuses before a byte of the image is passed on, so nothing of a refused image
  reaches the spool or the registry; it is decided on the header alone, before the upstream
  checksum is known (a refused header fails the arch whatever its checksum says).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Literal

from containerdisks.pipeline.stages import Chunks

__all__ = [
    "HEAD",
    "DiskFormat",
    "disk_format",
    "inspected",
    "refusal",
]

DiskFormat = Literal["qcow2", "raw"]

#: Bytes of the image's head that are inspected.
HEAD = 64 << 10

_MAGIC = b"QFI\xfb"
_V2_HEADER = 72  # version 2's header length; version 3 says its own, at least 104
_V3_HEADER = 104
_INCOMPAT_DATA_FILE = 1 << 2
_INCOMPAT_KNOWN = 0b11111  # dirty, corrupt, external data file, compression type, extended L2
_EXT_END = 0x00000000
_EXT_DATA_FILE = 0x44415441
_EXT_ENCRYPTION = 0x0537BE77
_CRYPT = {1: "AES", 2: "LUKS"}
_CLUSTER_BITS = (9, 21)  # what qemu opens; it bounds the extension area (the first cluster)
_SHOWN = 200


def disk_format(head: bytes) -> DiskFormat:
    """How qemu must open an image starting with `head`: `qcow2` by its magic, else `raw`."""
    return "qcow2" if head.startswith(_MAGIC) else "raw"


def _shown(name: bytes) -> str:
    text = repr(name.decode("utf-8", errors="backslashreplace"))
    return text if len(text) <= _SHOWN else text[: _SHOWN - 4] + "...'"


def _walk_extensions(head: bytes, start: int, end: int) -> tuple[bytes | None, bool, str | None]:
    """Header extensions from `start` to the end marker or `end` (the first cluster):
    (data file name, whether an encryption header is present, why the walk stopped short)."""
    data_file: bytes | None = None
    encrypted = False
    offset = start
    while offset < end:
        if offset + 8 > len(head):
            return data_file, encrypted, f"header extensions run past the first {len(head)} bytes"
        kind, length = struct.unpack_from(">II", head, offset)
        offset += 8
        if kind == _EXT_END:
            break
        if length > end - offset:
            return data_file, encrypted, f"header extension {kind:#010x} is too large ({length})"
        if offset + length > len(head):
            return data_file, encrypted, f"header extensions run past the first {len(head)} bytes"
        if kind == _EXT_DATA_FILE:
            data_file = head[offset : offset + length]
        elif kind == _EXT_ENCRYPTION:
            encrypted = True
        offset += (length + 7) & ~7
    return data_file, encrypted, None


def refusal(head: bytes, max_virtual_size: int) -> str | None:
    """Why an image starting with `head` must not be published or booted, or None.

    `head` is the image's first `HEAD` bytes (all of it when shorter). The answer is one line
    starting `qcow2 header:` and naming the field."""
    if disk_format(head) != "qcow2":
        return None
    if len(head) < 8:
        return f"qcow2 header: truncated at {len(head)} bytes"
    (version,) = struct.unpack_from(">I", head, 4)
    if version not in (2, 3):
        return f"qcow2 header: version {version} (only 2 and 3 are known)"
    header_length = _V2_HEADER
    if len(head) < header_length:
        return f"qcow2 header: truncated at {len(head)} bytes"
    backing_offset, backing_size, cluster_bits, size, crypt = struct.unpack_from(">QIIQI", head, 8)
    if backing_offset or backing_size:
        fields = f"backing_file_offset={backing_offset}, backing_file_size={backing_size}"
        name = head[backing_offset : backing_offset + min(backing_size, 1023)]
        if backing_offset and backing_size and backing_offset + backing_size <= len(head):
            return f"qcow2 header: backing file {_shown(name)} ({fields})"
        return f"qcow2 header: backing file ({fields})"
    incompatible = 0
    if version == 3:
        if len(head) < _V3_HEADER:
            return f"qcow2 header: truncated at {len(head)} bytes"
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        (header_length,) = struct.unpack_from(">I", head, 100)
        if header_length < _V3_HEADER:
            return f"qcow2 header: header_length={header_length} (below {_V3_HEADER})"
    if not _CLUSTER_BITS[0] <= cluster_bits <= _CLUSTER_BITS[1]:
        return f"qcow2 header: cluster_bits={cluster_bits} (qemu opens 9 to 21)"
    data_file, encryption_ext, stopped = _walk_extensions(head, header_length, 1 << cluster_bits)
    if incompatible & _INCOMPAT_DATA_FILE or data_file is not None:
        shown = f" {_shown(data_file)}" if data_file is not None else ""
        why = (
            "incompatible_features bit 2"
            if incompatible & _INCOMPAT_DATA_FILE
            else f"header extension {_EXT_DATA_FILE:#010x}"
        )
        return f"qcow2 header: external data file{shown} ({why})"
    if crypt:
        method = _CRYPT.get(crypt, "unknown")
        return f"qcow2 header: encryption (crypt_method={crypt}, {method})"
    if encryption_ext:
        return f"qcow2 header: encryption (header extension {_EXT_ENCRYPTION:#010x})"
    unknown = incompatible & ~_INCOMPAT_KNOWN
    if unknown:
        return (
            f"qcow2 header: unknown incompatible feature bits {unknown:#x} "
            f"(incompatible_features={incompatible:#x})"
        )
    if stopped is not None:
        return f"qcow2 header: {stopped}"
    if size > max_virtual_size:
        return f"qcow2 header: virtual size {size} above max_virtual_size ({max_virtual_size})"
    return None


async def inspected(
    source: Chunks, max_virtual_size: int, refused: Callable[[str], Exception]
) -> Chunks:
    """Pass `source` through once its first `HEAD` bytes passed `refusal`; else raise
    `refused(line)` before a byte is passed on."""
    held: list[bytes] = []
    have = 0
    checked = False
    async for chunk in source:
        if checked:
            yield chunk
            continue
        held.append(chunk)
        have += len(chunk)
        if have < HEAD:
            continue
        head = held[0][:HEAD] if len(held[0]) >= HEAD else b"".join(held)[:HEAD]
        if (why := refusal(head, max_virtual_size)) is not None:
            raise refused(why)
        checked = True
        for kept in held:
            yield kept
        held.clear()
    if not checked:
        if (why := refusal(b"".join(held), max_virtual_size)) is not None:
            raise refused(why)
        for kept in held:
            yield kept
