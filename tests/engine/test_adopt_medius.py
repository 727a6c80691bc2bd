"""A cut-over from medius republishes nothing: `images push` adopts what medius published.

The published state is an image shaped as medius shapes it (tests/support/medius_image.py: its
tar, config and Docker manifest list, written to the real registry by hand over HTTP). Upstream
is the loopback server behind `--upstream-mirror`; the catalog is a `static` entry of two arches
whose checksums are those of the served disks. The real `images push --dry-run=false` runs as a
subprocess; the registry's own access log shows what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import clean_env
from tests.support.medius_image import MediusArch, push_medius_image
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer, put

URL = "https://images.example.org/tiny/{arch}.img"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
DISKS = {arch: f"raw disk of {arch}\n".encode() * 100 for arch in ARCHES}
SHA = {arch: hashlib.sha256(d).hexdigest() for arch, d in DISKS.items()}
ENV_SORTED = [
    "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small",
    "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=tiny",
]
WRITES = re.compile(r'"(PUT|POST|PATCH|DELETE) (/v2/[^ ]*)')


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamServer]:
    root = tmp_path / "upstream"
    for arch, disk in DISKS.items():
        put(root, URL.format(arch=arch), disk)
    with UpstreamServer(root) as srv:
        yield srv


def catalog(path: Path) -> Path:
    per_arch = "".join(f"        {arch}: {{checksum: {SHA[arch]}}}\n" for arch in ARCHES)
    path.write_text(
        "catalog: replace\n"
        "entries:\n"
        "  - name: tiny\n"
        '    version: "1"\n'
        "    arches: [x86_64, aarch64]\n"
        "    instancetype: u1.small\n"
        "    preference: tiny\n"
        "    source:\n"
        "      kind: static\n"
        "      url: https://images.example.org/tiny/{arch}.img\n"
        f'      checksum: "{SHA["x86_64"]}"\n'
        "      per_arch:\n"
        f"{per_arch}"
    )
    return path


def medius(registry: Registry, **changes: object) -> str:
    """Publish `tiny:1` as medius would: Env reversed (Go map order), tags `1-<ts>` and `1`."""
    arches = [
        MediusArch(goarch, SHA[arch], env=list(reversed(ENV_SORTED)), disk=DISKS[arch])
        for arch, goarch in ARCHES.items()
    ]
    for key, value in changes.items():
        setattr(arches[0], key, value)
    return push_medius_image(registry.url, "ns/tiny", ["1-2406011530", "1"], arches)


def push(
    registry: Registry, upstream: UpstreamServer, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "containerdisks", "images", "push",
            "--config", str(catalog(tmp_path / "catalog.yaml")),
            "--source-registry", f"{registry.host}/ns",
            "--insecure-skip-tls",
            "--log-format", "json",
            "--work-dir", str(tmp_path / "work"),
            "--results-file", str(tmp_path / "results.json"),
            *upstream.mirror_args(),
            *extra,
        ],
        capture_output=True, text=True, timeout=120, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip


def writes_since(registry: Registry, offset: int) -> list[str]:
    return [" ".join(m) for m in WRITES.findall(registry.log_text()[offset:])]


def tag_digest(registry: Registry) -> str:
    """The digest `tiny:1` names, as skopeo reads it."""
    return "sha256:" + hashlib.sha256(registry.inspect_raw("ns/tiny", "1")).hexdigest()


def actions(stdout: str) -> dict[str, str]:
    """ARCH -> OUTCOME of the outcome table (ENTRY ARCH OUTCOME DIGEST TAGS; an outcome may
    hold spaces, and it ends where the short digest, or `-`, starts)."""
    rows = [
        re.match(r"(\S+)\s+(\S+)\s+(.*?)\s+(?:[0-9a-f]{12}|-)(?:\s|$)", line)
        for line in stdout.splitlines()[1:]
        if line.strip()
    ]
    return {m.group(2): m.group(3) for m in rows if m}


def test_a_medius_image_with_the_same_shasum_is_adopted_and_nothing_is_written(
    registry: Registry, upstream: UpstreamServer, tmp_path: Path
) -> None:
    digest = medius(registry)
    before = len(registry.log_text())

    done = push(registry, upstream, tmp_path, "--dry-run=false")

    assert 0 == done.returncode, done.stderr
    adopted = "up-to-date (adopted from medius)"
    assert {"x86_64": adopted, "aarch64": adopted} == actions(done.stdout)
    assert [] == writes_since(registry, before)  # no blob, manifest or tag written
    assert digest == tag_digest(registry)
    assert 0 == sum(upstream.count(URL.format(arch=a), method="GET") for a in ARCHES)
    assert not (tmp_path / "results.json").exists() or "tiny:1" not in json.loads(
        (tmp_path / "results.json").read_text()
    )


def test_force_rebuilds_an_adopted_medius_image(
    registry: Registry, upstream: UpstreamServer, tmp_path: Path
) -> None:
    medius(registry)
    done = push(registry, upstream, tmp_path, "--force", "--output", "json")
    assert 0 == done.returncode, done.stderr
    rows = json.loads(done.stdout)["entries"][0]["arches"]
    assert [("build", "forced")] * 2 == [(r["action"], r["reason"]) for r in rows]


def test_a_medius_image_whose_shasum_differs_is_republished(
    registry: Registry, upstream: UpstreamServer, tmp_path: Path
) -> None:
    old = medius(registry, shasum="0" * 64)
    before = len(registry.log_text())

    done = push(registry, upstream, tmp_path, "--dry-run=false")

    assert 0 == done.returncode, done.stderr
    assert "published" == actions(done.stdout)["x86_64"]
    # aarch64 is unchanged: its medius manifest is adopted and kept in the new list
    assert "reused (adopted from medius)" == actions(done.stdout)["aarch64"]
    assert any(w.startswith("PUT /v2/ns/tiny/manifests/1") for w in writes_since(registry, before))
    new = tag_digest(registry)
    assert old != new
    results = json.loads((tmp_path / "results.json").read_text())
    assert new == results["tiny:1"]["Digest"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"labels": {"org.example.foreign": "x"}}, "a foreign label"),
        ({"layers": 2}, "a second layer"),
        ({"env": ["INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.large"]}, "another env"),
        (
            {"labels": {"org.opencontainers.image.source": "https://elsewhere.example/x.img"}},
            "another source URL",
        ),
    ],
)
def test_a_medius_image_that_differs_in_anything_else_is_not_adopted(
    registry: Registry,
    upstream: UpstreamServer,
    tmp_path: Path,
    change: dict[str, object],
    why: str,
) -> None:
    medius(registry, **change)
    done = push(registry, upstream, tmp_path, "--output", "json")
    assert 0 == done.returncode, done.stderr
    rows = {r["arch"]: r for r in json.loads(done.stdout)["entries"][0]["arches"]}
    assert ("build", "config changed") == (rows["x86_64"]["action"], rows["x86_64"]["reason"]), why
    assert "reuse" == rows["aarch64"]["action"], why  # the other arch is adopted, then reused
