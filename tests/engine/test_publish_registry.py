"""`images push --dry-run=false` into the real registry, checked by skopeo and podman.

Upstream: the loopback server with real qcow2 files (qemu-img) behind the real releases.json.
Everything published is read back by independent clients: skopeo (containers/image, what CDI's
importer uses) and `podman pull --arch` + `podman cp` (the path CRI-O takes).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import clean_env, push
from tests.support.disks import (
    fedora_link,
    make_qcow2,
    replace_fedora_image,
    sha256,
)
from tests.support.registry import start_registry

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def skopeo(*args: str) -> str:
    return subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def raw(ref: str) -> dict[str, Any]:
    return json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))  # type: ignore[no-any-return]


def tags(ref: str) -> list[str]:
    return sorted(json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{ref}"))["Tags"])


def disk_via_skopeo(tmp_path: Path, ref: str, goarch: str) -> tuple[dict[str, Any], bytes]:
    """(config, disk bytes) of one platform, copied out by skopeo and unpacked with tarfile."""
    dest = tmp_path / f"pulled-{goarch}-{abs(hash(ref))}"
    skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--override-arch",
        goarch,
        f"docker://{ref}",
        f"oci:{dest}:x",
    )
    index = json.loads((dest / "index.json").read_text())

    def blob(d: str) -> bytes:
        return (dest / "blobs/sha256" / d.split(":")[1]).read_bytes()

    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    with tarfile.open(
        fileobj=io.BytesIO(gzip.decompress(blob(manifest["layers"][0]["digest"])))
    ) as t:
        f = t.extractfile("disk/disk.img")
        assert f is not None
        return config, f.read()


def test_publish_fedora_into_the_registry(tmp_path: Path, registry: Any, fedora: Any) -> None:
    srv, disks = fedora
    ns = f"{registry.host}/containerdisks"
    result = push(srv, ns, cwd=tmp_path)
    assert 0 == result.returncode, result.stderr

    index = raw(f"{ns}/fedora:40")
    assert DOCKER_LIST == index["mediaType"]
    assert [("amd64", "linux"), ("arm64", "linux")] == [
        (m["platform"]["architecture"], m["platform"]["os"]) for m in index["manifests"]
    ]
    assert {DOCKER_MANIFEST} == {m["mediaType"] for m in index["manifests"]}
    assert ["amd64", "arm64", "s390x"] == [
        m["platform"]["architecture"] for m in raw(f"{ns}/fedora:39")["manifests"]
    ]
    for (version, arch), disk in disks.items():
        tag = version.lower().replace(" ", "-")
        goarch = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x"}[arch]
        if (version, arch) == ("40", "s390x"):
            continue
        config, got = disk_via_skopeo(tmp_path, f"{ns}/fedora:{tag}", goarch)
        assert disk == got
        assert sha256(disk) == config["config"]["Labels"]["shasum"]
        assert ["no-entrypoint"] == config["config"]["Entrypoint"]
    all_tags = tags(f"{ns}/fedora")
    assert {"40", "40-1.14", "39", "39-1.5", "41-beta", "latest"} <= set(all_tags)
    assert raw(f"{ns}/fedora:latest") == index
    assert raw(f"{ns}/fedora:40-1.14") == index

    # Second run: no download, no new tag, nothing in the results file.
    srv.clear()
    again = push(srv, ns, cwd=tmp_path)
    assert 0 == again.returncode, again.stderr
    assert [] == [p for p in srv.paths() if p.endswith(".qcow2")]
    assert all_tags == tags(f"{ns}/fedora")
    assert {} == json.loads((tmp_path / "results.json").read_text())

    # The same upstream bytes into another namespace: identical digests.
    other = f"{registry.host}/elsewhere"
    assert 0 == push(srv, other, cwd=tmp_path).returncode
    for tag in ("40", "39", "41-beta", "latest"):
        assert raw(f"{ns}/fedora:{tag}") == raw(f"{other}/fedora:{tag}")


def test_switching_to_oci_media_types_rebuilds_without_mixing(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    ns = f"{registry.host}/cd"
    assert 0 == push(srv, ns, "--focus", "fedora:39", cwd=tmp_path).returncode
    srv.clear()
    result = push(srv, ns, "--focus", "fedora:39", "--media-types", "oci", cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    assert [] == [p for p in srv.paths() if p.endswith(".qcow2")]  # gzip layers reused
    index = raw(f"{ns}/fedora:39")
    assert OCI_INDEX == index["mediaType"]
    assert {OCI_MANIFEST} == {m["mediaType"] for m in index["manifests"]}
    for m in index["manifests"]:
        child = raw(f"{ns}/fedora@{m['digest']}")
        assert "application/vnd.oci.image.layer.v1.tar+gzip" == child["layers"][0]["mediaType"]


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_podman_pulls_each_arch_and_copies_the_disk_out(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, disks = fedora
    ns = f"{registry.host}/containerdisks"
    assert 0 == push(srv, ns, "--focus", "fedora:40", cwd=tmp_path).returncode
    storage = tmp_path / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{tmp_path}/run"\ngraphroot = "{tmp_path}/graph"\n'
    )
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage)}

    def podman(*args: str) -> str:
        return subprocess.run(
            ["podman", *args], capture_output=True, text=True, check=True, timeout=120, env=env
        ).stdout.strip()

    for arch, goarch in (("x86_64", "amd64"), ("aarch64", "arm64")):
        podman("pull", "-q", "--tls-verify=false", "--arch", goarch, f"{ns}/fedora:40")
        container = podman("create", "--arch", goarch, f"{ns}/fedora:40")
        out = tmp_path / f"disk-{goarch}.img"
        podman("cp", f"{container}:/disk/disk.img", str(out))
        podman("rm", container)
        podman("rmi", "-f", f"{ns}/fedora:40")
        assert disks[("40", arch)] == out.read_bytes()


@pytest.mark.parametrize("auth", ["basic", "token"])
def test_publish_with_credentials_from_the_auth_file(
    tmp_path: Path, fedora: Any, auth: str
) -> None:
    srv, _ = fedora
    with start_registry(tmp_path / "reg", auth=auth) as reg:  # type: ignore[arg-type]
        assert reg.credentials is not None
        user, password = reg.credentials
        auth_file = tmp_path / "auth.json"
        secret = base64.b64encode(f"{user}:{password}".encode()).decode()
        auth_file.write_text(json.dumps({"auths": {reg.host: {"auth": secret}}}))
        env = clean_env()
        env["REGISTRY_AUTH_FILE"] = str(auth_file)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "containerdisks",
                "images",
                "push",
                "--dry-run=false",
                "--focus",
                "fedora:40",
                "--source-registry",
                f"{reg.host}/cd",
                "--log-format",
                "json",
                *srv.mirror_args(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        assert 0 == result.returncode, result.stderr
        for text in (result.stdout, result.stderr):
            assert password not in text
            assert secret not in text
        out = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--raw",
                "--tls-verify=false",
                f"--creds={user}:{password}",
                f"docker://{reg.host}/cd/fedora:latest",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert DOCKER_LIST == json.loads(out.stdout)["mediaType"]


def test_source_and_target_in_different_registries(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    """medius's periodic job: decide against production, push to another registry. Unchanged
    arches are copied from registry to registry, never downloaded from upstream again."""
    srv, disks = fedora
    source = f"{registry.host}/production"
    assert 0 == push(srv, source, "--focus", "fedora:39", cwd=tmp_path).returncode
    published = raw(f"{source}/fedora:39")
    new = make_qcow2(tmp_path / "n.qcow2", "new s390x")
    replace_fedora_image(srv.root, "39", "s390x", new)
    srv.clear()
    with start_registry(tmp_path / "staging-registry") as staging:
        target = f"{staging.host}/staging"
        result = push(
            srv, source, "--focus", "fedora:39", "--target-registry", target, cwd=tmp_path
        )
        assert 0 == result.returncode, result.stderr
        staged = raw(f"{target}/fedora:39")
        assert ["/" + fedora_link("39", "s390x").removeprefix("https://")] == [
            p for p in srv.paths() if p.endswith(".qcow2")
        ]
        assert published["manifests"][:2] == staged["manifests"][:2]  # copied, same digests
        assert published["manifests"][2]["digest"] != staged["manifests"][2]["digest"]
        _, disk = disk_via_skopeo(tmp_path, f"{target}/fedora:39", "amd64")
        _, s390x = disk_via_skopeo(tmp_path, f"{target}/fedora:39", "s390x")
        assert new == s390x
        assert disks[("39", "x86_64")] == disk
    assert published == raw(f"{source}/fedora:39")  # the source is only read
