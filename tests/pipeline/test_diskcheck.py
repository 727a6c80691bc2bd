"""The disk header inspector on real `qemu-img` output, and on headers edited by hand where
qemu-img cannot make the case (an unknown feature bit, extensions past the inspected head).

Every image is made in the test's tmp_path; the canary is a file the image points at."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from containerdisks.pipeline.diskcheck import HEAD, disk_format, inspected, refusal
from containerdisks.settings import Settings

CAP = Settings().max_virtual_size  # the default the user gets


def qemu_img(*args: str | Path) -> None:
    done = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, timeout=60)
    assert 0 == done.returncode, done.stderr.decode(errors="replace")


def make(path: Path, *options: str | Path, size: str = "8M") -> bytes:
    qemu_img("create", "-q", "-f", "qcow2", *options, path, size)
    with path.open("rb") as f:
        return f.read(HEAD)


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    path.write_text("host secret\n")
    return path


def test_clean_images_pass_as_qcow2(tmp_path: Path) -> None:
    v3 = make(tmp_path / "v3.qcow2")
    v2 = make(tmp_path / "v2.qcow2", "-o", "compat=0.10")
    known = make(tmp_path / "zstd.qcow2", "-o", "compression_type=zstd,extended_l2=on")
    assert struct.unpack(">I", v2[4:8]) == (2,)
    assert struct.unpack(">I", v3[4:8]) == (3,)
    assert struct.unpack(">Q", known[72:80])[0] & 0b11000  # both known bits are set
    for head in (v3, v2, known):
        assert refusal(head, CAP) is None
        assert "qcow2" == disk_format(head)


def test_raw_passes_as_raw(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "3T")  # sparse: no cap applies to raw here
    with raw.open("rb") as f:
        head = f.read(HEAD)
    assert refusal(head, CAP) is None
    assert "raw" == disk_format(head)
    assert refusal(b"", CAP) is None  # an empty disk is not a qcow2 either
    assert "raw" == disk_format(b"QFI")


def test_backing_file_is_refused_naming_it(tmp_path: Path, canary: Path) -> None:
    head = make(tmp_path / "b.qcow2", "-b", canary, "-F", "raw")
    offset = struct.unpack(">Q", head[8:16])[0]
    assert (
        f"qcow2 header: backing file {str(canary)!r} (backing_file_offset={offset}, "
        f"backing_file_size={len(str(canary))})"
    ) == refusal(head, CAP)


def test_a_backing_name_with_control_characters_is_shown_escaped(tmp_path: Path) -> None:
    name = "/x\nInjected: line\x1b[31m\u2028"
    head = make(tmp_path / "b.qcow2", "-u", "-b", name, "-F", "raw")
    why = refusal(head, CAP)
    assert why is not None
    assert why.isprintable()  # no newline, escape or line separator reaches a log
    assert repr(name) in why


def test_external_data_file_is_refused_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "canary"
    head = make(tmp_path / "d.qcow2", "-o", f"data_file={data}")
    assert (
        f"qcow2 header: external data file {str(data)!r} (incompatible_features bit 2)"
        == refusal(head, CAP)
    )
    # The name extension alone (the feature bit cleared by hand) is refused too.
    edited = bytearray(head)
    struct.pack_into(">Q", edited, 72, struct.unpack(">Q", head[72:80])[0] & ~4)
    assert (
        f"qcow2 header: external data file {str(data)!r} (header extension 0x44415441)"
        == refusal(bytes(edited), CAP)
    )


def test_luks_encryption_is_refused(tmp_path: Path) -> None:
    head = make(
        tmp_path / "e.qcow2",
        "--object",
        "secret,id=s,data=x",
        "-o",
        # A short key-derivation benchmark: the default (2 s) failed once on a loaded machine.
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=50",
    )
    assert "qcow2 header: encryption (crypt_method=2, LUKS)" == refusal(head, CAP)
    # The encryption header extension without crypt_method (edited) is refused as well.
    edited = bytearray(head)
    struct.pack_into(">I", edited, 32, 0)
    assert "qcow2 header: encryption (header extension 0x0537be77)" == refusal(bytes(edited), CAP)


def test_virtual_size_over_the_cap_is_refused(tmp_path: Path) -> None:
    assert 2 << 40 == CAP  # 2 TiB by default
    at_cap = make(tmp_path / "at.qcow2", size=str(CAP))
    over = make(tmp_path / "over.qcow2", size=str(CAP + 512))
    assert refusal(at_cap, CAP) is None
    assert f"qcow2 header: virtual size {CAP + 512} above max_virtual_size ({CAP})" == refusal(
        over, CAP
    )
    small = make(tmp_path / "small.qcow2", size="2M")
    assert refusal(small, 1 << 20) == (
        f"qcow2 header: virtual size {2 << 20} above max_virtual_size ({1 << 20})"
    )


def test_unknown_incompatible_bits_are_refused_known_ones_are_not(tmp_path: Path) -> None:
    head = make(tmp_path / "v3.qcow2")
    for bit, expected in ((0, None), (1, None), (5, 0x20), (63, 1 << 63)):
        edited = bytearray(head)
        struct.pack_into(">Q", edited, 72, 1 << bit)
        got = refusal(bytes(edited), CAP)
        if expected is None:
            assert got is None, bit
        else:
            assert (
                f"qcow2 header: unknown incompatible feature bits {expected:#x} "
                f"(incompatible_features={1 << bit:#x})" == got
            )


def test_other_versions_and_bad_fields_are_refused(tmp_path: Path) -> None:
    head = make(tmp_path / "v3.qcow2")
    for version in (1, 4, 0xFFFFFFFF):
        edited = bytearray(head)
        struct.pack_into(">I", edited, 4, version)
        assert f"qcow2 header: version {version} (only 2 and 3 are known)" == refusal(
            bytes(edited), CAP
        )
    edited = bytearray(head)
    struct.pack_into(">I", edited, 20, 0xFFFFFFFF)  # cluster_bits: must not become 1 << 2**32
    assert "qcow2 header: cluster_bits=4294967295 (qemu opens 9 to 21)" == refusal(
        bytes(edited), CAP
    )
    edited = bytearray(head)
    struct.pack_into(">I", edited, 100, 72)
    assert "qcow2 header: header_length=72 (below 104)" == refusal(bytes(edited), CAP)


def _header_with_extensions(extensions: list[tuple[int, bytes]], cluster_bits: int) -> bytes:
    """A version 3 header (no backing file, no encryption) followed by `extensions`."""
    header = bytearray(104)
    header[0:4] = b"QFI\xfb"
    struct.pack_into(">IQIIQ", header, 4, 3, 0, 0, cluster_bits, 1 << 20)
    struct.pack_into(">II", header, 96, 4, 104)
    for kind, data in extensions:
        header += struct.pack(">II", kind, len(data)) + data + b"\0" * (-len(data) % 8)
    return bytes(header + struct.pack(">II", 0, 0))


def test_extensions_past_the_inspected_head_are_refused_not_guessed() -> None:
    # 2 MiB clusters: qemu would read a data file name placed after 64 KiB of filler.
    image = _header_with_extensions([(0x12345678, bytes(HEAD)), (0x44415441, b"/etc/shadow")], 21)
    assert "qcow2 header: header extensions run past the first 65536 bytes" == refusal(
        image[:HEAD], CAP
    )
    assert "qcow2 header: external data file '/etc/shadow' (header extension 0x44415441)" == (
        refusal(image, CAP)
    )
    # An extension longer than the first cluster is malformed (qemu: "too large").
    image = _header_with_extensions([(0x12345678, bytes(1024))], 9)
    assert "qcow2 header: header extension 0x12345678 is too large (1024)" == refusal(image, CAP)
    assert refusal(_header_with_extensions([(0x12345678, b"x" * 40)], 16), CAP) is None


def test_every_truncation_is_one_line_or_a_pass(tmp_path: Path, canary: Path) -> None:
    clean = make(tmp_path / "v3.qcow2")
    backing = make(tmp_path / "b.qcow2", "-b", canary, "-F", "raw")
    results = [refusal(clean[:n], CAP) for n in range(1100)]
    assert [None] * 4 == results[:4]  # too short to be a qcow2: raw
    whole = results.index(None, 4)  # from here on the header and its extensions are in
    assert 104 < whole
    assert all(r is None for r in results[whole:])
    for r in results[4:whole]:
        assert r is not None
        assert r.startswith("qcow2 header: ")
        assert r.isprintable()
    assert "qcow2 header: truncated at 71 bytes" == refusal(clean[:71], CAP)
    assert "qcow2 header: truncated at 103 bytes" == refusal(clean[:103], CAP)
    for n in range(72, 1100):
        got = refusal(backing[:n], CAP)
        assert got is not None
        assert got.startswith("qcow2 header: backing file"), (n, got)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class RefusedError(Exception):
    pass


async def _passed(source: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in inspected(source, CAP, RefusedError):
        into.append(chunk)


@pytest.mark.parametrize("size", [1, 4096, HEAD - 1, HEAD, 1 << 20])
async def test_stage_passes_a_clean_image_unchanged(tmp_path: Path, size: int) -> None:
    path = tmp_path / "v3.qcow2"
    make(path)
    data = path.read_bytes() * 2
    if size == 1:
        data = data[: HEAD + 100]  # byte by byte: keep it short
    out = [c async for c in inspected(_chunks(data, size), CAP, RefusedError)]
    assert data == b"".join(out)
    short = b"a raw disk shorter than the head" * 100
    assert [short] == [c async for c in inspected(_chunks(short, 4096), CAP, RefusedError)]


@pytest.mark.parametrize("size", [7, 4096, 1 << 20])
async def test_stage_refuses_before_passing_a_byte_on(
    tmp_path: Path, canary: Path, size: int
) -> None:
    path = tmp_path / "b.qcow2"
    make(path, "-b", canary, "-F", "raw")
    data = path.read_bytes()
    passed: list[bytes] = []
    with pytest.raises(RefusedError, match=r"^qcow2 header: backing file "):
        await _passed(_chunks(data, size), passed)
    assert [] == passed
    with pytest.raises(RefusedError, match=r"^qcow2 header: truncated at 50 bytes$"):
        await _passed(_chunks(data[:50], size), passed)
    assert [] == passed
