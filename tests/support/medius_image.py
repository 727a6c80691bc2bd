"""A containerdisk as medius (go-containerregistry) publishes it, pushed by hand over HTTP.

Independent of the code under test: the tar, gzip, config, manifest and list are assembled here
with the standard library, in medius's shape (the Go tool's `pkg/build` and `images push`):

- the layer: a USTAR tar of `disk/` (0555) and `disk/disk.img` (0444), uid/gid 107, uname/gname
  `qemu`, mtimes of "now" (so not reproducible), gzip level 1;
- the config: `architecture`, a zero `created`, one empty `history` entry, `os`, `rootfs`, and
  `config` with `Entrypoint: ["no-entrypoint"]`, the `Env` in whatever order it is given (Go map
  order: random) and the `shasum` label as the only label;
- Docker schema 2 media types; a manifest list for several arches, a plain manifest for one.

The blobs and manifests go to a plain-HTTP registry with urllib (monolithic upload: POST, then
PUT with `?digest=`), so what the registry holds was written by no code of ours.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urljoin

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class MediusArch:
    """One arch of a medius image; `labels` beyond `shasum` and `layers` > 1 make it foreign."""

    goarch: str
    shasum: str
    env: list[str] = field(default_factory=list)
    disk: bytes = b"medius disk"
    labels: dict[str, str] = field(default_factory=dict)
    layers: int = 1


def _tar(disk: bytes) -> bytes:
    now = int(time.time())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        d = tarfile.TarInfo("disk/")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o555, now
        f = tarfile.TarInfo("disk/disk.img")
        f.size, f.mode, f.mtime = len(disk), 0o444, now
        for info in (d, f):
            info.uid = info.gid = 107
            info.uname = info.gname = "qemu"
        tar.addfile(d)
        tar.addfile(f, io.BytesIO(disk))
    return buf.getvalue()


def _go_json(value: object) -> bytes:
    """As Go's encoding/json writes a struct: fields in declaration order, no spaces."""
    return json.dumps(value, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Pusher:
    def __init__(self, registry_url: str, repository: str) -> None:
        self.base = registry_url.rstrip("/") + f"/v2/{repository}/"

    def blob(self, data: bytes) -> str:
        digest = _digest(data)
        post = urllib.request.Request(self.base + "blobs/uploads/", method="POST")
        with urllib.request.urlopen(post, timeout=30) as resp:
            location = urljoin(self.base, resp.headers["Location"])
        sep = "&" if "?" in location else "?"
        put = urllib.request.Request(f"{location}{sep}digest={digest}", data=data, method="PUT")
        put.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(put, timeout=30):
            pass
        return digest

    def manifest(self, reference: str, media_type: str, data: bytes) -> str:
        req = urllib.request.Request(self.base + f"manifests/{reference}", data=data, method="PUT")
        req.add_header("Content-Type", media_type)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(resp.headers["Docker-Content-Digest"])


def _image(push: _Pusher, arch: MediusArch) -> tuple[str, bytes]:
    layers = []
    diff_ids = []
    for n in range(arch.layers):
        tar = _tar(arch.disk if n == 0 else b"another layer %d" % n)
        blob = gzip.compress(tar, compresslevel=1)
        layers.append({"mediaType": DOCKER_LAYER, "size": len(blob), "digest": push.blob(blob)})
        diff_ids.append(_digest(tar))
    inner: dict[str, object] = {"Entrypoint": ["no-entrypoint"]}
    if arch.env:
        inner["Env"] = arch.env
    inner["Labels"] = {"shasum": arch.shasum, **arch.labels}
    config = _go_json(
        {
            "architecture": arch.goarch,
            "created": ZERO_TIME,
            "history": [{"created": ZERO_TIME}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": inner,
        }
    )
    manifest = _go_json(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "size": len(config),
                "digest": push.blob(config),
            },
            "layers": layers,
        }
    )
    return push.manifest(_digest(manifest), DOCKER_MANIFEST, manifest), manifest


def push_medius_image(
    registry_url: str, repository: str, tags: list[str], arches: list[MediusArch]
) -> str:
    """Push a medius-shaped image under every tag (as medius, one write per tag); its digest."""
    push = _Pusher(registry_url, repository)
    images = [(a, *_image(push, a)) for a in arches]
    if len(images) == 1:
        top_type, top = DOCKER_MANIFEST, images[0][2]
    else:
        top_type = DOCKER_LIST
        top = _go_json(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_LIST,
                "manifests": [
                    {
                        "mediaType": DOCKER_MANIFEST,
                        "size": len(manifest),
                        "digest": digest,
                        "platform": {"architecture": a.goarch, "os": "linux"},
                    }
                    for a, digest, manifest in images
                ],
            }
        )
    digest = ""
    for tag in tags:
        digest = push.manifest(tag, top_type, top)
    return digest
