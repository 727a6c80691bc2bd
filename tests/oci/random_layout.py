"""A minimal OCI image layout of random small blobs, for the oci client's tests.

Written with tarfile/gzip/json only (not with the code under test) and pushed with skopeo, so
what the client reads was produced independently. Containerdisk-shaped images live in
tests/support/images.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containerdisks.oci import RegistryClient
from containerdisks.oci.media import parse_image_manifest, parse_index
from tests.support.registry import Registry, start_registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Layout:
    """What was written: digests to compare with what the client reads."""

    root: Path
    tag: str
    index_digest: str | None = None
    manifests: dict[str, str] = field(default_factory=dict)  # arch -> manifest digest
    configs: dict[str, bytes] = field(default_factory=dict)  # arch -> config bytes


def _put(root: Path, data: bytes) -> str:
    hexdigest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}"


def _layer(payload_size: int) -> tuple[bytes, str]:
    """(gzip blob, diff_id) of a tar holding one file of random bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        payload = os.urandom(payload_size)
        info = tarfile.TarInfo("payload")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), f"sha256:{hashlib.sha256(raw).hexdigest()}"


def write_random_layout(
    root: Path,
    tag: str,
    arches: Sequence[str],
    *,
    index: bool = True,
    os_name: str = "linux",
    payload_size: int = 512,
    layers: int = 1,
) -> Layout:
    """Write ``root`` as an OCI layout whose ``tag`` is an index of ``arches`` (or, with
    ``index=False``, the single manifest of ``arches[0]``); each image has ``layers`` layers of
    ``payload_size`` random bytes (gzip cannot shrink them)."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layout = Layout(root, tag)
    entries: list[dict[str, object]] = []
    for arch in arches:
        made = [_layer(payload_size) for _ in range(layers)]
        layer_descriptors = [
            {"mediaType": OCI_LAYER_GZIP, "digest": _put(root, blob), "size": len(blob)}
            for blob, _ in made
        ]
        config = _canonical(
            {
                "architecture": arch,
                "os": os_name,
                "config": {"Labels": {"test.random": os.urandom(4).hex()}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in made]},
            }
        )
        config_digest = _put(root, config)
        manifest = _canonical(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": layer_descriptors,
            }
        )
        manifest_digest = _put(root, manifest)
        layout.manifests[arch] = manifest_digest
        layout.configs[arch] = config
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": arch, "os": os_name},
            }
        )
    if index:
        data = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        layout.index_digest = _put(root, data)
        top: dict[str, object] = {
            "mediaType": OCI_INDEX,
            "digest": layout.index_digest,
            "size": len(data),
        }
    else:
        top = {k: v for k, v in entries[0].items() if k != "platform"}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_bytes(
        _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    )
    return layout


async def read_config(
    client: RegistryClient, repository: str, reference: str, arch: str
) -> dict[str, Any]:
    """The config of the `arch` image of `repository:reference`, read as a pull reads it: an
    index, its platform manifest (3 GETs with the config), or a single manifest."""
    manifest = await client.get_manifest(repository, reference)
    if manifest.is_index:
        entries = parse_index(manifest, reference)
        entry = next(e for e in entries if e.platform and e.platform.architecture == arch)
        manifest = await client.get_manifest(repository, entry.digest)
    image = parse_image_manifest(manifest, reference)
    config = await client.get_blob(repository, image.config.digest, max_size=image.config.size)
    doc: dict[str, Any] = json.loads(config)
    return doc


@dataclass
class Published:
    registry: Registry
    multi: Layout  # oci/multi:v1 (OCI index) and oci/multi-docker:v1 (Docker list)
    single: Layout  # oci/single:v1 (OCI manifest) and oci/single-docker:v1 (Docker v2s2)


@contextmanager
def published_layouts(work: Path) -> Iterator[Published]:
    """A real registry holding random images in every shape, pushed by skopeo."""
    with start_registry(work / "registry") as reg:
        multi = write_random_layout(work / "multi", "v1", ["amd64", "arm64"])
        single = write_random_layout(work / "single", "v1", ["amd64"], index=False)
        reg.push_layout(multi.root, "v1", "oci/multi", "v1", all_images=True)
        reg.push_layout(
            multi.root, "v1", "oci/multi-docker", "v1", all_images=True, docker_format=True
        )
        reg.push_layout(single.root, "v1", "oci/single", "v1")
        reg.push_layout(single.root, "v1", "oci/single-docker", "v1", docker_format=True)
        yield Published(reg, multi, single)
