"""Reads from a registry are bounded (issue 19, item 2): a blob body is read to its descriptor's
size and no further, and at a minimum rate.

A registry is hostile until checked (an image in it may not come from us). The fault proxy in
front of the real source registry makes a blob's body endless (chunked, no end in sight), or
announces more bytes than the descriptor says, or trickles it. `images promote` and `images
verify --local` run as real processes against it: the entry fails in one line within bounded
time, nothing is tagged in the target, no upload is left behind, no qemu is started.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from containerdisks import oci
from tests.oci.test_write import from_bytes
from tests.promote.test_promote import (
    STAMP,
    digest_of,
    manifest_puts,
    promote,
    read_results,
    stage,
    verified,
    write_results,
)
from tests.support.cli import clean_env
from tests.support.disks import make_qcow2
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.images import ArchImage, skopeo_push, write_layout
from tests.support.registry import Registry, start_registry
from tests.support.tinycloud import qemu_processes

_BLOBS = r"^/v2/staging/fedora/blobs/sha256:"


@pytest.mark.parametrize(
    ("action", "said"),
    [("endless", "more than the {size} bytes of its descriptor"), ("overlong", "Content-Length")],
)
def test_promote_refuses_a_source_blob_longer_than_its_descriptor(
    tmp_path: Path, action: str, said: str
) -> None:
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
        FaultProxy(src.url) as proxy,
    ):
        tags = [STAMP, "42"]
        stage(tmp_path, src.host, "staging/fedora", "f42", tags)
        digest = digest_of(src, "staging/fedora", "42")
        write_results(tmp_path, {"fedora:42": verified(tags, digest)})
        proxy.add(Rule("GET", _BLOBS, action, times=None))
        started = time.monotonic()
        done = promote(tmp_path, f"{proxy.host}/staging", f"{dst.host}/prod", "--dry-run=false")
        elapsed = time.monotonic() - started
        served = [  # the proxy logs the answer (its status), and again when the client hung up
            e for e in proxy.log if e.method == "GET" and "/blobs/sha256:" in e.path and e.status
        ]

        assert done.returncode == 1, done.stderr
        assert elapsed < 60  # 1 GiB more was on offer; the read stopped at the first byte too many
        assert "Traceback" not in done.stderr
        err = str(read_results(tmp_path)["fedora:42"]["Err"])
        assert err.startswith(f"fedora:42: promote to {dst.host}/prod/fedora: "), err
        assert "\n" not in err
        sizes = [
            str(d["size"])
            for m in _image_manifests(src, "staging/fedora", digest)
            for d in (m["config"], *m["layers"])
        ]
        assert any(said.format(size=s) in err for s in sizes), err
        assert served  # the blob was asked for once, not again: the refusal is not temporary
        assert 1 == len(served), [e.path for e in served]
        assert [] == manifest_puts(dst, "prod/fedora")  # nothing went up, nothing is tagged
        assert [] == dst.upload_dirs("prod/fedora")


def _image_manifests(reg: Registry, repo: str, digest: str) -> list[dict[str, object]]:
    top = json.loads(reg.inspect_raw(repo, digest))
    children = [m["digest"] for m in top.get("manifests", [])]
    return [json.loads(reg.inspect_raw(repo, c)) for c in children] or [top]


def test_verify_local_refuses_an_endless_layer_before_boot(
    tmp_path: Path, registry: Registry
) -> None:
    disk = make_qcow2(tmp_path / "d.qcow2", "d", size_mib=1)
    checksum = hashlib.sha256(disk).hexdigest()
    url = "https://evil.example/d.qcow2"
    layout = tmp_path / "layout"
    write_layout(layout, "1", [ArchImage("amd64", checksum, url, disk=disk)], index=False)
    skopeo_push(layout, "1", f"{registry.host}/cd/endless")
    entry = {
        "name": "endless",
        "version": "1",
        "arches": ["x86_64"],
        "user": "root",
        "source": {"kind": "static", "per_arch": {"x86_64": {"url": url, "checksum": checksum}}},
    }
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump({"entries": [entry]}))
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps({"endless:1": {"Tags": ["endless:1"], "Stage": "push"}}))
    with FaultProxy(registry.url) as proxy:
        # the config is read whole (capped); the layer is the streamed read
        proxy.add(Rule("GET", r"^/v2/cd/endless/blobs/sha256:", "endless", times=None))
        command = [
            sys.executable, "-m", "containerdisks", "images", "verify", "--local",
            "--dry-run=false", "--config", str(config), "--registry", f"{proxy.host}/cd",
            "--results-file", str(results_file), "--work-dir", str(tmp_path / "work"),
            "--log-format", "json",
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=tmp_path
        )
        elapsed = time.monotonic() - started
    assert 1 == done.returncode, done.stderr
    assert elapsed < 60
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [] == [e for e in events if e.get("event") in ("booting", "vm_started", "disk_pulled")]
    assert [] == qemu_processes(str(tmp_path))
    err = json.loads(results_file.read_text())["endless:1"]["Err"]
    assert f"{proxy.host}/cd/endless@sha256:" in err, err
    assert "bytes of its descriptor" in err, err
    assert "\n" not in err
    assert [] == sorted((tmp_path / "work" / "verify").iterdir())  # the partial disk is gone


async def test_a_trickling_blob_fails_within_the_rate_window(registry: Registry) -> None:
    data = os.urandom(4 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with (
        oci.RegistryClient(registry.host) as client,
        client.blob_upload("slow/blob") as upload,
    ):
        await upload.write(from_bytes(data, 1 << 20))
        blob = await upload.commit(digest)
    got: list[int] = []

    async def sink(chunk: bytes) -> None:
        got.append(len(chunk))

    with FaultProxy(registry.url) as proxy:
        # 64 KiB every 0.5 s: 128 KiB/s, far below the floor of 4 MB/s over a 1 s window
        proxy.add(Rule("GET", r"/blobs/sha256:", "slow", delay=0.5, times=None))
        async with oci.RegistryClient(
            proxy.host, blob_min_rate=4_000_000, blob_rate_window=1.0
        ) as client:
            started = time.monotonic()
            with pytest.raises(oci.TransferTooSlowError, match=r"slower than 4000000 bytes/s"):
                await client.read_blob("slow/blob", blob.digest, sink, size=blob.size)
            elapsed = time.monotonic() - started
        async with oci.RegistryClient(proxy.host, blob_deadline=1.0) as client:
            with pytest.raises(oci.TransportTimeoutError, match="timed out"):
                await client.read_blob("slow/blob", blob.digest, sink, size=blob.size)
    assert elapsed < 15  # the whole blob would take 32 s
    assert sum(got) < len(data)
