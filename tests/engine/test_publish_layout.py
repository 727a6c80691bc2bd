"""`images push --dry-run=false` into an `oci:` directory, checked with skopeo and tarfile.

The upstream is the loopback server with real qcow2 files (qemu-img) behind the real
releases.json; the published layouts are read back by skopeo, never by our code.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
import zstandard

from tests.support.cli import clean_env, push
from tests.support.disks import (
    fedora_link,
    make_qcow2,
    pack,
    replace_fedora_image,
    sha256,
)
from tests.support.upstream_server import UpstreamServer, put

ENV = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium"


def skopeo_raw(ref: str) -> dict[str, Any]:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", ref], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def layer_members(blob: bytes, media_type: str) -> list[tarfile.TarInfo | bytes]:
    if media_type.endswith("gzip"):
        blob = gzip.decompress(blob)
    elif media_type.endswith("zstd"):
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        members = t.getmembers()
        f = t.extractfile("disk/disk.img")
        assert f is not None
        return [*members, f.read()]


def read_image(layout: Path, tag: str, arch: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(manifest, config, disk bytes) of one arch, via skopeo copy into a fresh OCI dir."""
    dest = layout.parent / f"copy-{tag}-{arch}"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--override-arch",
            arch,
            f"oci:{layout}:{tag}",
            f"oci:{dest}:x",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    index = json.loads((dest / "index.json").read_text())
    blob = lambda d: (dest / "blobs/sha256" / d.split(":")[1]).read_bytes()  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    members = layer_members(
        blob(manifest["layers"][0]["digest"]), manifest["layers"][0]["mediaType"]
    )
    disk = members[-1]
    assert isinstance(disk, bytes)
    infos = [m for m in members if isinstance(m, tarfile.TarInfo)]
    assert [("disk", 0o555, 107, 107), ("disk/disk.img", 0o444, 107, 107)] == [
        (m.name, m.mode, m.uid, m.gid) for m in infos
    ]
    return manifest, config, disk


def test_publish_fedora_into_oci_layouts(tmp_path: Path, fedora: Any) -> None:
    srv, disks = fedora
    out = tmp_path / "out"
    result = push(srv, f"oci:{out}", cwd=tmp_path)
    assert 0 == result.returncode, result.stderr

    index = skopeo_raw(f"oci:{out}/fedora:40")
    assert "application/vnd.oci.image.index.v1+json" == index["mediaType"]
    assert [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}] == [
        m["platform"] for m in index["manifests"]
    ]
    for version, tag in (("40", "40"), ("39", "39"), ("41 Beta", "41-beta")):
        for arch, goarch in (("x86_64", "amd64"), ("aarch64", "arm64")):
            _, config, disk = read_image(out / "fedora", tag, goarch)
            assert disks[(version, arch)] == disk
            assert {
                "Entrypoint": ["no-entrypoint"],
                "Env": sorted(
                    [
                        ENV,
                        f"INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE="
                        f"{'fedora' if arch == 'x86_64' else 'fedora.arm64'}",
                    ]
                ),
                "Labels": {
                    "shasum": sha256(disk),
                    "org.opencontainers.image.source": fedora_link(version, arch),
                },
            } == config["config"]
            assert (goarch, "linux") == (config["architecture"], config["os"])
            assert {"created", "history"}.isdisjoint(config)

    results = json.loads((tmp_path / "results.json").read_text())
    assert {"fedora:40", "fedora:39", "fedora:41-beta"} == set(results)
    assert ["fedora:40-1.14", "fedora:40", "fedora:latest"] == results["fedora:40"]["Tags"][1:]
    assert results["fedora:40"]["Tags"][0].startswith("fedora:40-")
    assert ["fedora:41-beta"] == results["fedora:41-beta"]["Tags"][1:]
    assert 0o600 == (tmp_path / "results.json").stat().st_mode & 0o777
    # known size, no decompression: nothing spooled (the work dir is made, private, at start)
    assert [] == list((tmp_path / "work").iterdir())
    assert 0o700 == (tmp_path / "work").stat().st_mode & 0o777

    # Second run: nothing downloaded, nothing written, the layout unchanged.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    srv.clear()
    again = push(srv, f"oci:{out}", cwd=tmp_path)
    assert 0 == again.returncode, again.stderr
    assert [] == [p for p in srv.paths() if p.endswith(".qcow2")]
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert {} == json.loads((tmp_path / "results.json").read_text())


def test_one_changed_arch_is_the_only_download(tmp_path: Path, fedora: Any) -> None:
    srv, _ = fedora
    out = tmp_path / "out"
    assert 0 == push(srv, f"oci:{out}", cwd=tmp_path).returncode
    before = skopeo_raw(f"oci:{out}/fedora:39")["manifests"]
    new = make_qcow2(tmp_path / "new.qcow2", "changed")
    replace_fedora_image(srv.root, "39", "aarch64", new)
    srv.clear()
    result = push(srv, f"oci:{out}", cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    downloads = [p for p in srv.paths() if p.endswith(".qcow2")]
    assert [fedora_link("39", "aarch64").removeprefix("https:/")] == downloads
    after = skopeo_raw(f"oci:{out}/fedora:39")["manifests"]
    assert before[0] == after[0]  # x86_64 keeps its manifest digest
    assert before[2] == after[2]  # s390x too
    assert before[1]["digest"] != after[1]["digest"]
    assert new == read_image(out / "fedora", "39", "arm64")[2]


@pytest.mark.parametrize("compression", ["gzip", "xz"])
def test_compressed_upstream_images_are_decompressed(tmp_path: Path, compression: str) -> None:
    root = tmp_path / "up"
    disk = make_qcow2(tmp_path / "d.qcow2", "packed")
    name = f"img.qcow2.{'gz' if compression == 'gzip' else 'xz'}"
    packed = pack(disk, compression)
    put(root, f"https://example.org/images/{name}", packed)
    put(root, "https://example.org/images/SHA256SUMS", f"{sha256(packed)}  {name}\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "entries": [
                    {
                        "name": "packed",
                        "version": "1",
                        "arches": ["x86_64"],
                        "source": {
                            "kind": "checksum-file",
                            "url": "https://example.org/images/SHA256SUMS",
                            "format": "gnu",
                            "match": r"img\.qcow2\..*",
                        },
                    }
                ]
            }
        )
    )
    out = tmp_path / "out"
    with UpstreamServer(root) as srv:
        env = clean_env()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "containerdisks",
                "images",
                "push",
                "--dry-run=false",
                "--config",
                str(config),
                "--source-registry",
                f"oci:{out}",
                "--work-dir",
                str(tmp_path / "work"),
                *srv.mirror_args(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
    assert 0 == result.returncode, result.stderr
    manifest = skopeo_raw(f"oci:{out}/packed:1")
    assert "application/vnd.oci.image.manifest.v1+json" == manifest["mediaType"]
    _, config_doc, got = read_image(out / "packed", "1", "amd64")
    assert disk == got
    assert sha256(packed) == config_doc["config"]["Labels"]["shasum"]
    assert [] == list((tmp_path / "work").iterdir())  # the spool file is gone


def fedora_config(tmp_path: Path, preference: str = "fedora") -> Path:
    config = tmp_path / "fedora.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "entries": [
                    {
                        "name": "fedora",
                        "arches": ["x86_64", "aarch64", "s390x"],
                        "instancetype": "u1.medium",
                        "preference": preference,
                        "latest": True,
                        "source": {"kind": "fedora", "exclude": ["40/s390x"]},
                    }
                ]
            }
        )
    )
    return config


def test_changed_env_rebuilds_configs_without_downloading(tmp_path: Path, fedora: Any) -> None:
    srv, disks = fedora
    out = tmp_path / "out"
    assert (
        0
        == push(
            srv, f"oci:{out}", "--config", str(fedora_config(tmp_path)), cwd=tmp_path
        ).returncode
    )
    before = skopeo_raw(f"oci:{out}/fedora:40")
    srv.clear()
    config = fedora_config(tmp_path, preference="fedora.new")
    result = push(srv, f"oci:{out}", "--config", str(config), cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    assert [] == [p for p in srv.paths() if p.endswith(".qcow2")]  # layers reused
    after = skopeo_raw(f"oci:{out}/fedora:40")
    assert before["manifests"][0]["digest"] != after["manifests"][0]["digest"]
    _, cfg, disk = read_image(out / "fedora", "40", "amd64")
    assert "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora.new" in cfg["config"]["Env"]
    assert disks[("40", "x86_64")] == disk


def test_same_bytes_give_the_same_digests_anywhere(tmp_path: Path, fedora: Any) -> None:
    srv, _ = fedora
    for name in ("a", "b"):
        assert 0 == push(srv, f"oci:{tmp_path / name}", cwd=tmp_path).returncode
    for tag in ("40", "39", "41-beta", "latest"):
        a = skopeo_raw(f"oci:{tmp_path / 'a'}/fedora:{tag}")
        assert a == skopeo_raw(f"oci:{tmp_path / 'b'}/fedora:{tag}")
    index_a = json.loads((tmp_path / "a/fedora/index.json").read_text())
    index_b = json.loads((tmp_path / "b/fedora/index.json").read_text())

    def digests(index: dict[str, Any]) -> dict[str, str]:
        ref = "org.opencontainers.image.ref.name"
        return {m["annotations"][ref]: m["digest"] for m in index["manifests"]}

    assert {k: v for k, v in digests(index_a).items() if "-2" not in k} == {
        k: v for k, v in digests(index_b).items() if "-2" not in k
    }


def test_a_run_killed_between_tag_writes_is_healed(tmp_path: Path, fedora: Any) -> None:
    srv, _ = fedora
    out = tmp_path / "out"
    assert 0 == push(srv, f"oci:{out}", cwd=tmp_path).returncode
    index_path = out / "fedora/index.json"
    index = json.loads(index_path.read_text())
    ref = "org.opencontainers.image.ref.name"
    want = {m["annotations"][ref]: m["digest"] for m in index["manifests"]}
    # As if the process died after writing `40` but before `latest` and the unique tag moved:
    index["manifests"] = [m for m in index["manifests"] if m["annotations"][ref] != "latest"]
    for m in index["manifests"]:
        if m["annotations"][ref] == "40-1.14":
            m["digest"] = want["39"]
    index_path.write_text(json.dumps(index))
    srv.clear()
    result = push(srv, f"oci:{out}", "--output", "json", cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    plan = {e["entry"]: e for e in json.loads(result.stdout)["entries"]}
    assert {"retag"} == {a["action"] for a in plan["fedora:40"]["arches"]}
    assert [] == [p for p in srv.paths() if p.endswith(".qcow2")]
    healed = json.loads(index_path.read_text())
    got = {m["annotations"][ref]: m["digest"] for m in healed["manifests"]}
    assert (want["40"], want["40"]) == (got["latest"], got["40-1.14"])
    assert ["fedora:40-1.14", "fedora:latest"] == json.loads(
        (tmp_path / "results.json").read_text()
    )["fedora:40"]["Tags"]


@pytest.mark.parametrize(
    ("compression", "layer_type"),
    [
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("none", "application/vnd.oci.image.layer.v1.tar"),
    ],
)
def test_zstd_and_uncompressed_layers(
    tmp_path: Path, fedora: Any, compression: str, layer_type: str
) -> None:
    srv, disks = fedora
    out = tmp_path / "out"
    result = push(
        srv,
        f"oci:{out}",
        "--focus",
        "fedora:40",
        "--media-types",
        "oci",
        "--layer-compression",
        compression,
        cwd=tmp_path,
    )
    assert 0 == result.returncode, result.stderr
    manifest, _, disk = read_image(out / "fedora", "40", "arm64")
    assert layer_type == manifest["layers"][0]["mediaType"]
    assert disks[("40", "aarch64")] == disk


def test_a_published_index_never_loses_an_arch(tmp_path: Path, fedora: Any) -> None:
    srv, _ = fedora
    out = tmp_path / "out"
    assert 0 == push(srv, f"oci:{out}", "--focus", "fedora:39", cwd=tmp_path).returncode
    before = skopeo_raw(f"oci:{out}/fedora:39")
    releases = srv.root / "getfedora.org" / "releases.json"
    items = json.loads(releases.read_text())
    releases.write_text(
        json.dumps([i for i in items if not (i["version"] == "39" and i["arch"] == "s390x")])
    )
    result = push(srv, f"oci:{out}", "--focus", "fedora:39", cwd=tmp_path)
    assert 1 == result.returncode
    assert "upstream no longer lists s390x" in result.stderr
    assert before == skopeo_raw(f"oci:{out}/fedora:39")
