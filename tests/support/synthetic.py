"""A synthetic catalog of many `static` entries with tiny real qcow2 images on a loopback upstream.

One job: lay out `count` entries `s000:1`, `s001:1`, ... whose arches cycle through one, two and
three (so arches, not entries, are what a balanced split must even out), each arch a distinct
tiny qcow2 made by qemu-img under `https://images.example/<name>/<arch>.qcow2`, and write the
catalog file (replacing the default) that publishes them. Used by the sharded-push tests and by
benchmarks/shards.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.disks import make_qcow2
from tests.support.upstream_server import put

__all__ = ["ARCH_CYCLE", "synthetic_catalog"]

ARCH_CYCLE = (("x86_64",), ("x86_64", "aarch64"), ("x86_64", "aarch64", "s390x"))


def synthetic_catalog(root: Path, catalog: Path, count: int, disks: Path) -> dict[str, int]:
    """Images under upstream tree `root`, the catalog at `catalog`; entry key -> its arches."""
    lines = ["catalog: replace", "entries:"]
    entries: dict[str, int] = {}
    for i in range(count):
        name = f"s{i:03d}"
        arches = ARCH_CYCLE[i % len(ARCH_CYCLE)]
        lines += [
            f"  - name: {name}",
            '    version: "1"',
            f"    arches: [{', '.join(arches)}]",
            "    source:",
            "      kind: static",
            f"      url: https://images.example/{name}/{{arch}}.qcow2",
            '      checksum: "' + "0" * 64 + '"',
            "      per_arch:",
        ]
        for arch in arches:
            data = make_qcow2(
                disks / f"{name}-{arch}.qcow2", f"{name}/{arch}", size_mib=1, data_kib=64
            )
            put(root, f"https://images.example/{name}/{arch}.qcow2", data)
            lines += [
                f"        {arch}:",
                f'          checksum: "{hashlib.sha256(data).hexdigest()}"',
            ]
        entries[f"{name}:1"] = len(arches)
    catalog.write_text("\n".join(lines) + "\n")
    return entries
