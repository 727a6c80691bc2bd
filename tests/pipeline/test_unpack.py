"""The shared decoders: every kind handles several members, bounds its output, names truncation."""

from __future__ import annotations

import gzip
import lzma

import pytest
import zstandard

from containerdisks.pipeline.unpack import UnpackError, decoder

DATA = bytes(range(256)) * 4096  # 1 MiB

PACK = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "none": lambda b: b,
}


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "none"])
def test_every_kind_decodes_several_members_in_bounded_chunks(kind: str) -> None:
    packed = PACK[kind](DATA[:300_000]) + PACK[kind](DATA[300_000:])
    d = decoder(kind, limit=64 << 10)  # type: ignore[arg-type]
    out: list[bytes] = []
    for i in range(0, len(packed), 5000):
        d.feed(packed[i : i + 5000], out.append)
    d.finish()
    assert DATA == b"".join(out)
    if kind != "none":
        assert 64 << 10 == max(len(c) for c in out)


@pytest.mark.parametrize("kind", ["gzip", "xz"])
def test_a_truncated_member_is_named(kind: str) -> None:
    packed = PACK[kind](DATA)
    d = decoder(kind, limit=1 << 20, name="layer x")  # type: ignore[arg-type]
    d.feed(packed[: len(packed) // 2], lambda _: None)
    with pytest.raises(UnpackError, match=f"^layer x: truncated {kind} stream$"):
        d.finish()
