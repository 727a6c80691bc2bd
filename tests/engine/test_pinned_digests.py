"""The digests a fixed upstream input publishes, pinned: a refactoring must not move them.

Users pull containerdisks by digest and KubeVirt caches them by digest, so the bytes of every
blob we write (layer tar, gzip/zstd stream, config, manifest) are a contract. A fixed raw disk
(seeded bytes, no qemu-img: its output differs between qemu versions) is pushed by the real
command into `oci:` layouts with each layer compression; the digests must equal the values
first recorded at 5b07e16 (before issue 20's redesign). skopeo reads every layout back, so the
pinned values are also ones an independent client accepts.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import push, static_catalog
from tests.support.upstream_server import UpstreamServer, put

URL = "https://example.org/pinned/disk.img"
DISK = random.Random("containerdisks-pinned").randbytes(3 << 20) + bytes(1 << 20)

# variant: (flags, manifest digest, config digest, layer digest), as recorded at 5b07e16
CONFIG = "sha256:8badc9bf3f8ee8c5270e745c35d2b29f363c94b0a59cb2a624fb2df75297fb11"
PINNED = {
    "docker-gzip": (
        [],
        "sha256:bd2cfba9176333bb254e79b523024bc596bc55224b0dc6dc581b9cd5a59046dd",
        CONFIG,
        "sha256:aa4884826f3af20e4dcb43709a48e8be810360d0bff21ea7e7beb015e604dc81",
    ),
    "oci-none": (
        ["--media-types", "oci", "--layer-compression", "none"],
        "sha256:8c203f34f949324f4c78a2a8d8ff2b3d721c3314f6b1629f7d306beef728ce52",
        CONFIG,
        "sha256:cd85cd02e95c0cf7cbd1bb147f869c51daf4bd0765d75fb4f977b12476a907b8",
    ),
    "oci-zstd": (
        ["--media-types", "oci", "--layer-compression", "zstd"],
        "sha256:7cd873b583daa3ecfb68345b9c1c570f9985751fd1aae8c73280e0769de71d5e",
        CONFIG,
        "sha256:9a5d45e3982dcda0a4070ed0f8fb87fafa1a727b5e93ca00372735976987df68",
    ),
}


def catalog(path: Path) -> Path:
    return static_catalog(
        path,
        URL,
        hashlib.sha256(DISK).hexdigest(),
        name="pinned",
        extra="    instancetype: u1.small\n    preference: pinned\n",
    )


@pytest.mark.parametrize("variant", PINNED)
def test_a_fixed_upstream_input_publishes_the_pinned_digests(tmp_path: Path, variant: str) -> None:
    flags, manifest_digest, config_digest, layer_digest = PINNED[variant]
    put(tmp_path / "up", URL, DISK)
    out = tmp_path / "out"
    with UpstreamServer(tmp_path / "up") as srv:
        result = push(
            srv,
            f"oci:{out}",
            "--config",
            str(catalog(tmp_path / "c.yaml")),
            "--focus",
            "pinned:1",
            *flags,
            cwd=tmp_path,
        )
    assert 0 == result.returncode, result.stderr
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{out}/pinned:1"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    manifest = json.loads(raw)
    got = (
        "sha256:" + hashlib.sha256(raw).hexdigest(),
        manifest["config"]["digest"],
        manifest["layers"][0]["digest"],
    )
    assert (manifest_digest, config_digest, layer_digest) == got
