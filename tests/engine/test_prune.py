"""Tag retention (`images prune`) as a real process against a real registry and an `oci:` dir.

The repository is filled by skopeo (not our code) with distinct two-arch images under
timestamp tags, a Debian-style unique tag sharing a digest with an old timestamp tag, another
version's tags, and a platform manifest shared between an old and a kept index; skopeo then
reads what stayed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.cli import clean_env
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.images import seeded_layout
from tests.support.registry import Registry

REF = "org.opencontainers.image.ref.name"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def prune(
    target: str, cwd: Path, *flags: str, retries: int = 1
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "containerdisks",
            "images",
            "prune",
            "--source-registry",
            target,
            "--log-format",
            "json",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(CONTAINERDISKS_RETRIES=str(retries)),
        cwd=cwd,
    )


#: tag -> which image (seed) it points at. Image "b" shares its arm64 manifest with "e".
TAGS = {
    "13-2401010000": "a",
    "13-2402010000": "b",
    "13-2403010000": "c",
    "13-20250814-2204": "c",  # the unique tag of that publish: keeps c alive
    "13-2404010000": "d",
    "13-2405010000": "e",
    "13": "e",
    "latest": "e",
    "13-9999999999": "f",  # not a valid stamp: never a candidate
    "12-2401010000": "g",  # another version's
    "12": "g",
}
ARM64 = {"b": "shared", "e": "shared"}


def layouts(tmp_path: Path) -> dict[str, Path]:
    return {
        s: seeded_layout(tmp_path / "src" / s, s, ARM64.get(s)) for s in sorted(set(TAGS.values()))
    }


def fill(reg: Registry, tmp_path: Path) -> dict[str, str]:
    """Push every tag with skopeo; the digest of each image by seed."""
    src = layouts(tmp_path)
    for tag, seed in TAGS.items():
        reg.push_layout(src[seed], "t", "cd/debian", tag, all_images=True, preserve_digests=True)
    return {s: digest(reg.inspect_raw("cd/debian", TAGS_BY_SEED[s])) for s in src}


TAGS_BY_SEED = {seed: tag for tag, seed in reversed(list(TAGS.items()))}


def children(reg: Registry, top: str) -> set[str]:
    return {m["digest"] for m in json.loads(reg.inspect_raw("cd/debian", top))["manifests"]}


def exists(reg: Registry, reference: str) -> bool:
    try:
        reg.inspect_raw("cd/debian", reference)
    except RuntimeError as e:
        if "manifest unknown" not in str(e).lower():
            raise
        return False
    return True


EXPECTED_AFTER = sorted(set(TAGS) - {"13-2401010000", "13-2402010000"})


def test_prune_keeps_the_newest_and_every_digest_a_kept_tag_needs(
    registry: Registry, tmp_path: Path
) -> None:
    digests = fill(registry, tmp_path)
    kids = {s: children(registry, d) for s, d in digests.items()}
    shared = kids["b"] & kids["e"]
    assert len(shared) == 1  # the arm64 manifest

    dry = prune(f"{registry.host}/cd", tmp_path, "--focus", "debian:*", "--keep-timestamp-tags=2")
    assert 0 == dry.returncode, dry.stderr
    assert sorted(TAGS) == sorted(registry.list_tags("cd/debian"))  # a dry run deletes nothing
    rows = {line.split()[1]: line for line in dry.stdout.splitlines()[1:] if "debian:13" in line}
    assert rows["13-2401010000"].endswith("delete")
    assert rows["13-2402010000"].endswith("delete")
    assert rows["13-2403010000"].endswith("keep: same digest as 13-20250814-2204")
    assert rows["13-2405010000"].endswith("keep: newest")
    assert {"13-2401010000", "13-2402010000", "13-2403010000", "13-2404010000",
            "13-2405010000"} == set(rows)  # fmt: skip
    assert "debian:12" in dry.stdout  # its own version: one stamp, kept

    done = prune(
        f"{registry.host}/cd",
        tmp_path,
        "--focus",
        "debian:*",
        "--keep-timestamp-tags=2",
        "--dry-run=false",
        "--output",
        "json",
    )
    assert 0 == done.returncode, done.stderr
    assert EXPECTED_AFTER == sorted(registry.list_tags("cd/debian"))
    # a and b are gone, and their platform manifests except the one e still lists.
    for seed in ("a", "b"):
        assert not exists(registry, digests[seed])
    for child in (kids["a"] | kids["b"]) - shared:
        assert not exists(registry, child)
    report = json.loads(done.stdout)
    (entry,) = [e for e in report["entries"] if e["entry"] == "debian:13"]
    assert sorted(entry["deleted"]) == sorted(
        [digests["a"], digests["b"], *((kids["a"] | kids["b"]) - shared)]
    )
    # Everything that stayed is whole: skopeo copies every kept image with all its children.
    for tag in EXPECTED_AFTER:
        registry.pull("cd/debian", tag, f"oci:{tmp_path / 'check'}:{tag}")
    # Nothing left to do: a second run deletes nothing and says so.
    again = prune(
        f"{registry.host}/cd", tmp_path, "--focus", "debian:13", "--keep-timestamp-tags=2",
        "--dry-run=false",
    )  # fmt: skip
    assert 0 == again.returncode, again.stderr
    assert "delete" not in again.stdout
    assert EXPECTED_AFTER == sorted(registry.list_tags("cd/debian"))


def test_catalog_field_overrides_the_setting_and_off_keeps_all(
    registry: Registry, tmp_path: Path
) -> None:
    fill(registry, tmp_path)
    off = prune(f"{registry.host}/cd", tmp_path, "--focus", "debian:13", "--dry-run=false")
    assert 0 == off.returncode, off.stderr
    assert "retention off" in off.stdout
    assert sorted(TAGS) == sorted(registry.list_tags("cd/debian"))

    config = tmp_path / "config.yaml"
    config.write_text(
        "catalog: replace\n"
        "entries:\n"
        "  - {name: debian, version: '13', arches: [x86_64, aarch64], source: {kind: debian},\n"
        "     keep_timestamp_tags: 4}\n"
    )
    one = prune(
        f"{registry.host}/cd", tmp_path, "--config", str(config), "--keep-timestamp-tags=1",
        "--dry-run=false",
    )  # fmt: skip
    assert 0 == one.returncode, one.stderr
    assert sorted(set(TAGS) - {"13-2401010000"}) == sorted(registry.list_tags("cd/debian"))


def test_registry_refusing_deletes_warns_once_and_exits_0(
    no_delete_registry: Registry, tmp_path: Path
) -> None:
    reg = no_delete_registry
    src = layouts(tmp_path)
    pushes = {"13-2401010000": "a", "13-2402010000": "b", "13": "e",
              "12-2401010000": "g", "12-2402010000": "c", "12": "f"}  # fmt: skip
    for tag, seed in pushes.items():
        reg.push_layout(src[seed], "t", "cd/debian", tag, all_images=True)
    before = sorted(reg.list_tags("cd/debian"))
    result = prune(
        f"{reg.host}/cd", tmp_path, "--focus", "debian:*", "--keep-timestamp-tags=1",
        "--dry-run=false",
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "retention_unsupported"]
    assert 1 == len(warnings), result.stderr  # debian:12 and debian:13 share the repository
    assert warnings[0]["level"] == "warning"
    assert "UNSUPPORTED" in warnings[0]["error"]
    assert not [e for e in events if e["level"] == "error"]
    assert "refuses deletes" in result.stdout
    assert before == sorted(reg.list_tags("cd/debian"))


def test_prune_an_oci_layout_target(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    src = layouts(tmp_path)
    for tag, seed in TAGS.items():
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
             f"oci:{src[seed]}:t", f"oci:{out}/debian:{tag}"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    layout = out / "debian"
    blobs_before = {p.name for p in (layout / "blobs/sha256").iterdir()}

    dry = prune(f"oci:{out}", tmp_path, "--focus", "debian:13", "--keep-timestamp-tags=2")
    assert 0 == dry.returncode, dry.stderr
    assert blobs_before == {p.name for p in (layout / "blobs/sha256").iterdir()}

    done = prune(
        f"oci:{out}", tmp_path, "--focus", "debian:13", "--keep-timestamp-tags=2",
        "--dry-run=false",
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    index: dict[str, Any] = json.loads((layout / "index.json").read_text())
    assert EXPECTED_AFTER == sorted(m["annotations"][REF] for m in index["manifests"])
    gone = blobs_before - {p.name for p in (layout / "blobs/sha256").iterdir()}
    # a's index, both platform manifests, configs and layers; b's index and amd64 image
    # (its arm64 image is e's too).
    assert 7 + 4 == len(gone)
    for tag in EXPECTED_AFTER:
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--all", "--preserve-digests",
             f"oci:{out}/debian:{tag}", f"oci:{tmp_path / 'check'}:{tag}"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip


def test_an_old_tag_on_a_platform_manifest_of_a_kept_index_stays(
    registry: Registry, tmp_path: Path
) -> None:
    src = seeded_layout(tmp_path / "src", "a")
    # Without --all skopeo pushes only this host's platform manifest (amd64), digest kept:
    # the old publish was single-arch; the new one lists that very manifest in its index.
    registry.push_layout(src, "t", "cd/debian", "13-2401010000", preserve_digests=True)
    for tag in ("13-2402010000", "13"):
        registry.push_layout(src, "t", "cd/debian", tag, all_images=True, preserve_digests=True)
    old = digest(registry.inspect_raw("cd/debian", "13-2401010000"))
    assert old in children(registry, "13")

    result = prune(
        f"{registry.host}/cd", tmp_path, "--focus", "debian:13", "--keep-timestamp-tags=1",
        "--dry-run=false",
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    assert "keep: part of a kept index" in result.stdout
    assert ["13", "13-2401010000", "13-2402010000"] == sorted(registry.list_tags("cd/debian"))
    registry.pull("cd/debian", "13", f"oci:{tmp_path / 'check'}:13")


def test_a_refused_delete_fails_the_entry_and_a_lost_one_is_retried(
    registry: Registry, tmp_path: Path
) -> None:
    fill(registry, tmp_path)
    flags = ("--focus", "debian:13", "--keep-timestamp-tags=2", "--dry-run=false")
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("DELETE", r"/v2/cd/debian/manifests/", "status", status=403, times=None))
        denied = prune(f"{proxy.host}/cd", tmp_path, *flags)
    assert 1 == denied.returncode, denied.stderr
    assert "failed: debian:13: retention: " in denied.stdout
    assert "HTTP 403" in denied.stdout
    assert "Traceback" not in denied.stderr
    assert sorted(TAGS) == sorted(registry.list_tags("cd/debian"))

    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("DELETE", r"/v2/cd/debian/manifests/", "status", status=503, times=1))
        retried = prune(f"{proxy.host}/cd", tmp_path, *flags, retries=3)
        deletes = [e for e in proxy.log if e.method == "DELETE"]
    assert 0 == retried.returncode, retried.stderr
    assert EXPECTED_AFTER == sorted(registry.list_tags("cd/debian"))
    # the 503, a and b, then 3 platform manifests (b shares its arm64 one with e)
    assert len(deletes) == 1 + 2 + 3
