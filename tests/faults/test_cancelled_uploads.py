"""Cancelled blob uploads are removed from the real registry (issue 19, item 6).

A signal mid-stream, an upstream checksum mismatch and a digest mismatch while promote copies a
blob each end the upload with `DELETE` on its *latest* `Location`: distribution 2.8 refuses a
`DELETE` whose upload state names an older offset ("upload resumed at wrong offset") and keeps
the partial upload in `_uploads` until its purge, days later. Each test lists the repository's
`_uploads` directory on disk afterwards, and reads the registry's own log: every `DELETE` of an
upload answered 204, its state named the bytes the registry had (offset > 0), and the registry
never logged a wrong offset.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.promote.test_promote import STAMP, digest_of, promote, verified, write_results
from tests.support.cli import clean_env, command, push
from tests.support.disks import fedora_link, make_qcow2
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.images import ArchImage, skopeo_push, write_layout
from tests.support.registry import Registry, start_registry
from tests.support.upstream_server import put

_DELETE = re.compile(r'"DELETE (/v2/[^ ]+/blobs/uploads/[^ ?]+)\?([^ ]*) HTTP/1\.1" (\d{3})')


def upload_deletes(registry: Registry, repo: str) -> list[tuple[int, int]]:
    """(status, offset) of every upload DELETE into `repo`, from the registry's access log; the
    offset is read from the upload state the DELETE carried (base64url of HMAC + JSON)."""
    out = []
    for m in _DELETE.finditer(registry.log_text()):
        if not m.group(1).startswith(f"/v2/{repo}/"):
            continue
        query = dict(p.split("=", 1) for p in m.group(2).split("&"))
        token = query["_state"].replace("%3D", "=")
        state = json.loads(base64.urlsafe_b64decode(token)[32:])
        out.append((int(m.group(3)), int(state["Offset"])))
    return out


def assert_cleaned_up(registry: Registry, repo: str) -> list[tuple[int, int]]:
    deletes = upload_deletes(registry, repo)
    assert deletes, "no upload was deleted"
    assert all(status == 204 for status, _ in deletes), deletes
    assert "upload resumed at wrong offset" not in registry.log_text()
    assert [] == registry.upload_dirs(repo)
    return deletes


def test_sigterm_mid_stream_deletes_the_upload_at_its_latest_location(
    tmp_path: Path, registry: Registry, fedora: Any
) -> None:
    """The download is slowed by a proxy, so SIGTERM lands while the layer's PATCH streams:
    the body is ended there, the registry answers with the new Location, that is deleted."""
    srv, _ = fedora
    with FaultProxy(srv.base_url) as up:
        up.add(Rule("GET", r"\.qcow2$", "slow", delay=0.25, times=None))
        # an uncompressed layer: its bytes reach the registry as they arrive (gzip holds them)
        flags = ["--focus", "fedora:40", "--media-types", "oci", "--layer-compression", "none"]
        proc = subprocess.Popen(
            command(srv, f"{registry.host}/cd", *flags, cwd=tmp_path, via=up.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        try:
            uploads = registry.data_dir / "docker/registry/v2/repositories/cd/fedora/_uploads"
            deadline = time.monotonic() + 60
            while not any(p.stat().st_size > 0 for p in uploads.glob("*/data")):
                assert time.monotonic() < deadline, "no bytes reached the registry"
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)  # the registry holds bytes the POST's state lacks
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert 143 == proc.returncode, err
    assert "Traceback" not in err
    ((_, offset),) = assert_cleaned_up(registry, "cd/fedora")
    assert offset > 0  # the state after the bytes went in, not the POST's


def test_a_checksum_mismatch_deletes_the_upload(
    tmp_path: Path, registry: Registry, fedora: Any
) -> None:
    """The upstream serves other bytes than releases.json's sha256 names (same size): the
    whole layer is sent, the checksum fails, the upload is deleted, nothing is tagged."""
    srv, _ = fedora
    put(srv.root, fedora_link("40", "x86_64"), make_qcow2(tmp_path / "evil.qcow2", "evil"))

    result = push(srv, f"{registry.host}/cd", "--focus", "fedora:40", cwd=tmp_path)

    assert 1 == result.returncode, result.stderr
    assert "checksum mismatch" in result.stderr
    deletes = assert_cleaned_up(registry, "cd/fedora")
    assert all(offset > 0 for _, offset in deletes)


def _corrupt_layer(reg: Registry, repo: str, tag: str) -> str:
    """Flip the last bytes of the layer blob on the registry's disk (same size): the registry
    serves it as is, and only a reader checking the digest notices, at the end."""
    manifest = json.loads(reg.inspect_raw(repo, tag))
    digest = manifest["layers"][0]["digest"]
    hexd = digest.split(":")[1]
    data = reg.data_dir / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    raw = bytearray(data.read_bytes())
    raw[-16:] = bytes(b ^ 0xFF for b in raw[-16:])
    data.write_bytes(bytes(raw))
    return str(digest)


def test_a_digest_mismatch_during_promote_deletes_every_upload(tmp_path: Path) -> None:
    with (
        start_registry(tmp_path / "staging") as src,
        start_registry(tmp_path / "prod") as dst,
    ):
        layout = tmp_path / "layout"
        disk = os.urandom(3 << 20)  # a layer of several chunks: bytes flow before the check
        image = ArchImage("amd64", "0" * 64, "https://x/y", disk=disk)
        write_layout(layout, "t", [image], index=False)
        skopeo_push(layout, "t", f"{src.host}/staging/fedora", extra_tags=(STAMP, "42"))
        digest = digest_of(src, "staging/fedora", "42")
        _corrupt_layer(src, "staging/fedora", "42")
        write_results(tmp_path, {"fedora:42": verified([STAMP, "42"], digest)})

        result = promote(
            tmp_path,
            f"{src.host}/staging",
            f"{dst.host}/prod",
            "--dry-run=false",
            env=clean_env(CONTAINERDISKS_RETRIES="2"),
        )

        assert 1 == result.returncode, result.stderr
        assert "digest" in json.loads((tmp_path / "results.json").read_text())["fedora:42"]["Err"]
        deletes = assert_cleaned_up(dst, "prod/fedora")
        assert all(offset > 0 for _, offset in deletes)
