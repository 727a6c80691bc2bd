"""The README's air-gapped example runs as written, offline.

The block is read from README.md and run by bash; only the mirror's address
(`http://mirror.internal/`) and the directory (`/srv/containerdisks`) are replaced by a loopback
server and a temporary directory. The mirror serves a CHECKSUM file in CentOS's BSD format and a
real qcow2 made by qemu-img. Nothing else is reachable: had the command read quay.io (the default
source registry) or the real upstream, the entry would fail and the block with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.upstream_server import UpstreamServer

README = Path(__file__).resolve().parent.parent / "README.md"
IMAGE = "CentOS-Stream-GenericCloud-9-20250101.0.x86_64.qcow2"


def airgapped_block() -> str:
    text = README.read_text()
    start = text.index("Air-gapped, with the distributions' files")
    (block,) = re.findall(r"```bash\n(.*?)```", text[start:], flags=re.DOTALL)[:1]
    return block


def test_the_readme_airgapped_example_publishes_into_a_directory_offline(tmp_path: Path) -> None:
    block = airgapped_block()
    assert "http://mirror.internal/" in block
    assert "/srv/containerdisks" in block
    mirror = tmp_path / "mirror"
    images = mirror / "centos/centos/9-stream/x86_64/images"
    images.mkdir(parents=True)
    disk = images / IMAGE
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    sha = hashlib.sha256(disk.read_bytes()).hexdigest()
    (images / "CHECKSUM").write_text(
        f"# {IMAGE}: {disk.stat().st_size} bytes\nSHA256 ({IMAGE}) = {sha}\n"
    )
    out = tmp_path / "containerdisks"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERDISKS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CONTAINERDISKS_WORK_DIR"] = str(tmp_path / "work")
    env["CONTAINERDISKS_RESULTS_FILE"] = str(tmp_path / "results.json")
    with UpstreamServer(mirror) as srv:
        script = block.replace("http://mirror.internal/", srv.base_url).replace(
            "/srv/containerdisks", str(out)
        )
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env=env,
        )
        asked = sorted({r.path for r in srv.requests})
    assert 0 == done.returncode, done.stderr
    assert [
        f"/centos/centos/9-stream/x86_64/images/{name}" for name in ("CHECKSUM", IMAGE)
    ] == asked
    inspected = json.loads(done.stdout[done.stdout.index("{") :])
    assert ("amd64", sha) == (inspected["Architecture"], inspected["Labels"]["shasum"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert "centos-stream:9-20250101.0" in results["centos-stream:9"]["Tags"]
