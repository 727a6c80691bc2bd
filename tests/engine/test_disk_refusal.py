"""`images push --dry-run=false` refuses a qcow2 that names a host file, in every download path.

The upstream is the loopback server; the images are real qcow2 files (qemu-img) naming a canary
file the test writes, as a backing file or as an external data file, served plain (streamed
straight to the registry: known size, no spool) and compressed (xz, gzip: decompressed and
spooled). The push fails each such entry with one line naming the URL and the header field,
downloads it once (not retried), exits 1, and the real registry has no tag and no layer for it;
a clean entry in the same run is published. A qcow2 over `max_virtual_size` (set in the
environment) is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.cli import clean_env, push
from tests.support.crafted import backed, data_file
from tests.support.disks import make_qcow2, pack
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer, put

HOST = "evil.example"
CAP = 4 << 20  # max_virtual_size for the run, from the environment


def _entry(name: str, url: str, data: bytes) -> dict[str, Any]:
    checksum = hashlib.sha256(data).hexdigest()
    return {
        "name": name,
        "version": "1",
        "arches": ["x86_64"],
        "source": {"kind": "static", "per_arch": {"x86_64": {"url": url, "checksum": checksum}}},
    }


def _tags(registry: Registry, repository: str) -> list[str]:
    """The registry API's tag list; a repository it does not know has none."""
    try:
        with urllib.request.urlopen(f"{registry.url}/v2/{repository}/tags/list", timeout=10) as r:
            return list(json.load(r).get("tags") or [])
    except urllib.error.HTTPError as e:
        if e.code == 404:  # NAME_UNKNOWN
            return []
        raise


def test_push_refuses_qcow2_naming_host_files_in_every_download_path(
    tmp_path: Path, registry: Registry
) -> None:
    canary = tmp_path / "canary"
    disks = tmp_path / "disks"
    backing = f"backing file {str(canary)!r} ("
    data = f"external data file {str(canary)!r} ("
    big = f"virtual size {8 << 20} above max_virtual_size ({CAP})"
    images = {
        # name: (file served, disk, the refusal after "qcow2 header: "; empty: published)
        "backing-plain": ("backing.qcow2", backed(disks / "b.qcow2", canary), backing),
        "data-plain": ("data.qcow2", data_file(disks / "d.qcow2", canary), data),
        "backing-gz": ("backing-gz.qcow2.gz", backed(disks / "b.qcow2", canary), backing),
        "data-xz": ("data-xz.qcow2.xz", data_file(disks / "d.qcow2", canary), data),
        "big-xz": ("big.qcow2.xz", make_qcow2(disks / "big.qcow2", "big", size_mib=8), big),
        "clean": ("clean.qcow2", make_qcow2(disks / "c.qcow2", "clean", size_mib=4), ""),
    }
    up = tmp_path / "up"
    entries = []
    for name, (file, disk, _) in images.items():
        served = pack(disk, {".gz": "gzip", ".xz": "xz"}.get(Path(file).suffix))
        url = f"https://{HOST}/{file}"
        put(up, url, served)
        entries.append(_entry(name, url, served))
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump({"entries": entries}))
    results = tmp_path / "results.json"
    with UpstreamServer(up) as srv:
        done = push(
            srv,
            f"{registry.host}/cd",
            "--config",
            str(config),
            "--focus",
            "",  # every entry (the helper focuses on fedora:*)
            cwd=tmp_path,
            env=clean_env(CONTAINERDISKS_MAX_VIRTUAL_SIZE=str(CAP)),
        )
        downloads = {
            name: srv.count(f"https://{HOST}/{file}") for name, (file, *_) in images.items()
        }
    assert 1 == done.returncode, done.stderr
    assert "Traceback" not in done.stderr
    recorded = json.loads(results.read_text())
    for name, (file, _, refusal) in images.items():
        repository = f"cd/{name}"
        if not refusal:
            assert "Err" not in recorded[f"{name}:1"]
            assert "1" in _tags(registry, repository)
            continue
        err = recorded[f"{name}:1"]["Err"]
        assert err.startswith(f"{name}:1: https://{HOST}/{file}: qcow2 header: {refusal}"), err
        assert "\n" not in err
        assert err in done.stderr  # the same line in the log
        assert 1 == downloads[name], name  # refused for good: not downloaded again
        assert [] == _tags(registry, repository)
        layers = registry.data_dir / "docker/registry/v2/repositories" / repository / "_layers"
        assert not layers.exists()  # no blob was committed into the repository
        assert [] == registry.upload_dirs(repository)  # the upload session was cancelled
    assert [] == sorted((tmp_path / "work").glob("*.spool"))
