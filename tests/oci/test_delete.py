"""`delete_manifest` on a real registry (deletes on, off, behind token auth) and on a layout.

Images get into the registry with skopeo and are read back with skopeo: what is gone and what
stays is seen by an independent client. A manifest delete is by digest; distribution removes
every tag pointing at it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from containerdisks.oci import (
    ManifestUnknownError,
    RegistryClient,
    UnsupportedError,
)
from containerdisks.oci.layout import LayoutStore
from tests.support.images import seeded_layout as image
from tests.support.registry import Registry


def digest_of(reg: Registry, repository: str, tag: str) -> str:
    return "sha256:" + hashlib.sha256(reg.inspect_raw(repository, tag)).hexdigest()


def gone(reg: Registry, repository: str, reference: str) -> bool:
    try:
        reg.inspect_raw(repository, reference)
    except RuntimeError as e:
        return "manifest unknown" in str(e).lower()
    return False


async def test_delete_by_digest_removes_every_tag_pointing_at_it(
    registry: Registry, tmp_path: Path
) -> None:
    old, new = image(tmp_path / "old", "old"), image(tmp_path / "new", "new")
    for tag in ("1-2401010000", "1-2401020000"):  # two tags, one digest
        registry.push_layout(old, "t", "cd/x", tag, all_images=True, preserve_digests=True)
    registry.push_layout(new, "t", "cd/x", "1", all_images=True, preserve_digests=True)
    doomed = digest_of(registry, "cd/x", "1-2401010000")
    kept = digest_of(registry, "cd/x", "1")
    assert doomed != kept
    async with RegistryClient(registry.host) as client:
        await client.delete_manifest("cd/x", doomed)
        assert ["1"] == await client.list_tags("cd/x")
        with pytest.raises(ManifestUnknownError):
            await client.delete_manifest("cd/x", doomed)
    assert ["1"] == registry.list_tags("cd/x")
    assert gone(registry, "cd/x", doomed)
    assert kept == digest_of(registry, "cd/x", "1")


async def test_registry_with_deletes_disabled_says_unsupported(
    no_delete_registry: Registry, tmp_path: Path
) -> None:
    reg = no_delete_registry
    reg.push_layout(image(tmp_path / "a", "a"), "t", "cd/x", "1-2401010000", all_images=True)
    digest = digest_of(reg, "cd/x", "1-2401010000")
    async with RegistryClient(reg.host) as client:
        with pytest.raises(UnsupportedError) as caught:
            await client.delete_manifest("cd/x", digest)
    assert (405, "UNSUPPORTED") == (caught.value.status, caught.value.code)
    assert not caught.value.temporary
    assert ["1-2401010000"] == reg.list_tags("cd/x")


async def test_delete_asks_the_token_service_for_the_delete_action(
    token_registry: Registry, tmp_path: Path
) -> None:
    reg = token_registry
    assert reg.credentials is not None
    assert reg.token_server is not None
    reg.push_layout(image(tmp_path / "a", "a"), "t", "cd/x", "1-2401010000", all_images=True)
    reg.push_layout(image(tmp_path / "b", "b"), "t", "cd/x", "1", all_images=True)
    digest = digest_of(reg, "cd/x", "1-2401010000")
    async with RegistryClient(reg.host, credentials=reg.credentials) as client:
        await client.delete_manifest("cd/x", digest)
    assert ["1"] == reg.list_tags("cd/x")
    assert reg.token_server.count("repository:cd/x:pull,push,delete") >= 1


def layout_blobs(root: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (root / "blobs/sha256").iterdir() if p.is_file()}


def reachable(root: Path, digest: str) -> set[str]:
    """Digests `digest` reaches in the layout at `root`, read here with json (not our code)."""
    data = json.loads((root / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    out = {digest}
    for child in data.get("manifests", []):
        out |= reachable(root, child["digest"])
    if "config" in data:
        out |= {data["config"]["digest"], *(layer["digest"] for layer in data["layers"])}
    return out


async def test_layout_delete_drops_refs_and_blobs_only_it_used(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # a and b share their arm64 image (as a republish that reused an unchanged arch).
    a, b = image(tmp_path / "a", "a", "shared"), image(tmp_path / "b", "b", "shared")

    def copy(src: Path, tag: str) -> None:
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
             f"oci:{src}:t", f"oci:{out}/x:{tag}"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    copy(a, "1-2401010000")
    copy(a, "1-2401020000")
    copy(b, "1")
    index = json.loads((out / "x/index.json").read_text())
    by_tag = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    doomed, kept = by_tag["1-2401010000"], by_tag["1"]
    assert doomed == by_tag["1-2401020000"] != kept
    only_doomed = reachable(a, doomed) - reachable(b, kept)
    assert len(only_doomed) == 4  # the index, amd64's manifest, config and layer
    orphan = out / "x/blobs/sha256" / ("0" * 64)  # a publish in flight: written, not yet tagged
    orphan.write_bytes(b"in flight")
    before = layout_blobs(out / "x")

    store = LayoutStore(out)
    await store.delete_manifest("x", doomed)

    assert ["1"] == await store.list_tags("x")
    assert only_doomed == before - layout_blobs(out / "x")
    assert orphan.exists()
    # What stays is whole: skopeo copies every child of the kept tag.
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
         f"oci:{out}/x:1", f"oci:{tmp_path}/check:1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(ManifestUnknownError):
        await store.delete_manifest("x", doomed)
