"""Containerdisk-shaped images written as OCI layouts by the tests and pushed with skopeo.

This is deliberately independent of the project's own image code: the layout is assembled here by
hand (tarfile, gzip, json), and skopeo — not our client — puts it into the registry, so that a
"published" state in a test does not depend on the code under test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class ArchImage:
    """One platform image: its config fields as a containerdisk carries them."""

    goarch: str
    shasum: str
    source_url: str
    env: list[str] = field(default_factory=list)
    disk: bytes = b"QFI\xfb test disk"


def _blob(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    path = root / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(disk: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("disk")
        d.type, d.mode, d.uid, d.gid = tarfile.DIRTYPE, 0o555, 107, 107
        tar.addfile(d)
        f = tarfile.TarInfo("disk/disk.img")
        f.size, f.mode, f.uid, f.gid = len(disk), 0o444, 107, 107
        tar.addfile(f, io.BytesIO(disk))
    return buf.getvalue()


def config_for(image: ArchImage, diff_id: str) -> dict[str, object]:
    cfg: dict[str, object] = {
        "Entrypoint": ["no-entrypoint"],
        "Labels": {"shasum": image.shasum, "org.opencontainers.image.source": image.source_url},
    }
    if image.env:
        cfg["Env"] = sorted(image.env)
    return {
        "architecture": image.goarch,
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }


def write_layout(root: Path, tag: str, images: list[ArchImage], *, index: bool) -> None:
    """Write an OCI image layout at `root` with `tag` naming an index (or a single manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptors = []
    for image in images:
        tar = _layer(image.disk)
        layer = _blob(root, gzip.compress(tar, mtime=0))
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        config = _blob(root, json.dumps(config_for(image, diff_id)).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **config},
            "layers": [{"mediaType": OCI_LAYER_GZIP, **layer}],
        }
        desc = _blob(root, json.dumps(manifest).encode())
        descriptors.append(
            {
                "mediaType": OCI_MANIFEST,
                **desc,
                "platform": {"architecture": image.goarch, "os": "linux"},
            }
        )
    if index:
        idx = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        top = {"mediaType": OCI_INDEX, **_blob(root, json.dumps(idx).encode())}
    else:
        (only,) = descriptors
        top = {k: v for k, v in only.items() if k != "platform"}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))


def seeded_layout(root: Path, seed: str, arm64_seed: str | None = None) -> Path:
    """A two-arch (amd64, arm64) layout tagged `t` whose images depend on `seed` only (the
    arm64 one on `arm64_seed` when given: layouts with the same arm64 seed share that child
    manifest, as publishes that reused an unchanged arch do)."""
    images = []
    for goarch, s in (("amd64", seed), ("arm64", arm64_seed or seed)):
        shasum = hashlib.sha256(s.encode()).hexdigest()
        images.append(ArchImage(goarch, shasum, f"https://x/{s}", disk=f"{goarch} {s}".encode()))
    write_layout(root, "t", images, index=True)
    return root


def skopeo_push(
    layout: Path,
    tag: str,
    dest: str,
    *,
    docker_types: bool = True,
    extra_tags: tuple[str, ...] = (),
) -> None:
    """Push `layout:tag` to `docker://dest:tag` (and extra tags) with skopeo.

    With `docker_types`, manifests are converted to Docker schema 2 (`--format v2s2`) and an
    index to a Docker manifest list, as medius publishes them.
    """
    cmd = ["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false", "--preserve-digests"]
    if docker_types:
        cmd = [c for c in cmd if c != "--preserve-digests"] + ["--format", "v2s2"]
    for t in (tag, *extra_tags):
        subprocess.run(
            [*cmd, f"oci:{layout}:{tag}", f"docker://{dest}:{t}"],
            check=True,
            capture_output=True,
            timeout=60,
        )
