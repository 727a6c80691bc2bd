"""Real disk images for publishing tests, and upstream trees that serve them.

Images are real qcow2 files made by `qemu-img` from seeded data (a little random data and a lot
of zeros, as in a cloud image), so each (version, arch) has its own bytes and checksum. The
Fedora tree is the real `releases.json` fixture with the Cloud_Base qcow2 items pointed at those
files: their `sha256` replaced by the real checksum of what the server will send.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import random
import subprocess
from pathlib import Path
from typing import Any

from tests.support.upstream_server import FIXTURES_DIR, put

FEDORA_URL = "https://getfedora.org/releases.json"


def make_qcow2(path: Path, seed: str, *, size_mib: int = 8, data_kib: int = 512) -> bytes:
    """A qcow2 of `size_mib` virtual MiB holding `data_kib` KiB of seeded random data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw")
    rnd = random.Random(seed)
    with raw.open("wb") as f:
        f.truncate(size_mib << 20)
        for i in range(data_kib // 64):
            f.seek((i * 1_048_576 * 3) % ((size_mib << 20) - 65536))
            f.write(rnd.randbytes(65536))
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    raw.unlink()
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(data: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "xz":
        return lzma.compress(data)
    return data


def fedora_tree(
    root: Path, *, versions: tuple[str, ...] = ("40", "39", "41 Beta"), salt: str = ""
) -> dict[tuple[str, str], bytes]:
    """Lay out releases.json plus one qcow2 per (version, arch); return the disks by key.

    `salt` changes the bytes of every image (one arch can be changed by calling `put_image`)."""
    items = json.loads((FIXTURES_DIR / "fedora/releases.json").read_text())
    disks: dict[tuple[str, str], bytes] = {}
    for item in items:
        if not (
            item["version"] in versions
            and item["variant"] == "Cloud"
            and item["subvariant"] == "Cloud_Base"
            and item["link"].endswith(".qcow2")
        ):
            continue
        key = (item["version"], item["arch"])
        data = make_qcow2(root.parent / "disks" / f"{len(disks)}.qcow2", f"{key}{salt}")
        put(root, item["link"], data)
        item["sha256"] = sha256(data)
        disks[key] = data
    put(root, FEDORA_URL, json.dumps(items))
    return disks


def fedora_link(version: str, arch: str) -> str:
    items = json.loads((FIXTURES_DIR / "fedora/releases.json").read_text())
    for item in items:
        if (item["version"], item["arch"], item["variant"], item["subvariant"]) == (
            version,
            arch,
            "Cloud",
            "Cloud_Base",
        ) and item["link"].endswith(".qcow2"):
            return str(item["link"])
    raise KeyError((version, arch))


def replace_fedora_image(root: Path, version: str, arch: str, data: bytes) -> None:
    """Serve new bytes for one image and update its sha256 in releases.json."""
    link = fedora_link(version, arch)
    put(root, link, data)
    path = root / "getfedora.org" / "releases.json"
    items = json.loads(path.read_text())
    for item in items:
        if item["link"] == link:
            item["sha256"] = sha256(data)
    path.write_text(json.dumps(items))


def checksum_file_tree(root: Path, name: str, *, host: str = "images.example") -> dict[str, Any]:
    """Serve one x86_64 qcow2 and a GNU SHA256SUMS beside it at `https://<host>/<name>/`;
    return the catalog entry (`<name>:1`, source `checksum-file`) that publishes it."""
    base = f"https://{host}/{name}/"
    data = make_qcow2(root.parent / "disks" / f"{name}.qcow2", name)
    put(root, base + f"{name}-x86_64.qcow2", data)
    put(root, base + "SHA256SUMS", f"{sha256(data)}  {name}-x86_64.qcow2\n")
    return {
        "name": name,
        "version": "1",
        "arches": ["x86_64"],
        "source": {
            "kind": "checksum-file",
            "url": base + "SHA256SUMS",
            "format": "gnu",
            "match": name + r"-{arch}\.qcow2",
        },
    }
