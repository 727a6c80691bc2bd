"""`images verify --local` refuses, before booting, a disk whose qcow2 header names host files.

An image in the registry may not come from our push: here the crafted images (real qemu-img
qcow2 files whose backing file or external data file is a canary the test writes) are put into
the real registry by skopeo from an OCI layout built by hand, bypassing `images push`, and the
results file names them at stage `push`. Verify pulls each, reads its header, and fails the
entry with one line naming the field; no qemu is started (no boot event, no process). A clean
qcow2 over `max_virtual_size` (set in the environment) is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.cli import clean_env
from tests.support.crafted import backed, data_file
from tests.support.disks import make_qcow2
from tests.support.images import ArchImage, skopeo_push, write_layout
from tests.support.registry import Registry
from tests.support.tinycloud import qemu_processes


def test_verify_local_refuses_crafted_disks_before_boot(tmp_path: Path, registry: Registry) -> None:
    canary = tmp_path / "canary"
    cap = 4 << 20  # max_virtual_size for the run, from the environment
    disks = {  # name: (disk, the refusal after "qcow2 header: ")
        "backing": (backed(tmp_path / "b.qcow2", canary), f"backing file {str(canary)!r} ("),
        "datafile": (
            data_file(tmp_path / "d.qcow2", canary),
            f"external data file {str(canary)!r} (",
        ),
        "big": (
            make_qcow2(tmp_path / "big.qcow2", "big", size_mib=8),
            f"virtual size {8 << 20} above max_virtual_size ({cap})",
        ),
    }
    entries, results = [], {}
    for name, (disk, _) in disks.items():
        checksum = hashlib.sha256(disk).hexdigest()
        url = f"https://evil.example/{name}.qcow2"
        layout = tmp_path / f"layout-{name}"
        write_layout(layout, "1", [ArchImage("amd64", checksum, url, disk=disk)], index=False)
        skopeo_push(layout, "1", f"{registry.host}/cd/{name}")
        entries.append(
            {
                "name": name,
                "version": "1",
                "arches": ["x86_64"],
                "user": "root",
                "source": {
                    "kind": "static",
                    "per_arch": {"x86_64": {"url": url, "checksum": checksum}},
                },
            }
        )
        results[f"{name}:1"] = {"Tags": [f"{name}:1"], "Stage": "push"}
    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump({"entries": entries}))
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    command = [
        sys.executable, "-m", "containerdisks", "images", "verify", "--local", "--dry-run=false",
        "--config", str(config), "--registry", f"{registry.host}/cd",
        "--results-file", str(results_file), "--work-dir", str(tmp_path / "work"),
        "--log-format", "json", "--workers", "2",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(CONTAINERDISKS_MAX_VIRTUAL_SIZE=str(cap)),
        cwd=tmp_path,
    )
    assert 1 == done.returncode, done.stderr
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert 3 == sum(1 for e in events if e.get("event") == "disk_pulled")  # it was looked at
    assert [] == [e for e in events if e.get("event") in ("booting", "vm_started")]
    assert [] == qemu_processes(str(tmp_path))
    recorded = json.loads(results_file.read_text())
    for name, (_, refusal) in disks.items():
        err = recorded[f"{name}:1"]["Err"]
        where = f"{registry.host}/cd/{name}@sha256:"
        pattern = f"{name}:1: {re.escape(where)}[0-9a-f]{{64}}: qcow2 header: {re.escape(refusal)}"
        assert re.match(pattern, err), err
        assert "\n" not in err
        assert "verify" == recorded[f"{name}:1"]["Stage"]
        row = next(line for line in done.stdout.splitlines() if line.startswith(f"{name}:1 "))
        assert f"failed: {where}" in row
    assert [] == sorted((tmp_path / "work" / "verify").iterdir())  # the pulled disk is gone
