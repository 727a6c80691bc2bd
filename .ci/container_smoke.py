"""CI's container stage, last step: the built image runs `serve --once` against a test registry.

One job: start the same real parts the tests use (Debian's docker-registry on a free loopback
port, a loopback upstream serving Fedora's releases.json with real tiny qcow2 images), run the
image with podman — read-only root filesystem, a work dir mounted from the host (a pod's
emptyDir), host network — and check that it exits 0, that skopeo sees the published tags and that
the work dir holds the results file and nothing else. Prints one line per step; exit 0 on success.

    python .ci/container_smoke.py IMAGE
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.disks import fedora_tree
from tests.support.registry import start_registry
from tests.support.upstream_server import UpstreamServer

_RUN_TIMEOUT = 300


def say(line: str) -> None:
    sys.stdout.write(f"container smoke: {line}\n")
    sys.stdout.flush()


def main(image: str) -> int:
    with tempfile.TemporaryDirectory(prefix="containerdisks-smoke-") as tmp:
        root = Path(tmp)
        fedora_tree(root / "up")
        work = root / "work"  # the pod's emptyDir: owned by the image's user
        work.mkdir()
        os.chown(work, 65532, 65532)
        with start_registry(root / "registry") as reg, UpstreamServer(root / "up") as srv:
            command = [
                "podman", "run", "--rm",
                "--runtime", "runc",
                "--ulimit", "nofile=20000:20000",
                "--ulimit", "nproc=32768:32768",
                "--network", "host",
                "--read-only",
                "--volume", f"{work}:/var/lib/containerdisks",
                image,
                "--once",
                "--dry-run=false",
                "--focus", "fedora:40",
                "--source-registry", f"{reg.host}/containerdisks",
                "--upstream-mirror", f"https://={srv.base_url}",
                "--log-format", "json",
            ]  # fmt: skip
            say(" ".join(command))
            done = subprocess.run(  # noqa: S603 - our own fixed command line
                command, capture_output=True, text=True, timeout=_RUN_TIMEOUT, check=False
            )
            sys.stderr.write(done.stderr[-6000:])
            sys.stdout.write(done.stdout)
            if done.returncode != 0:
                say(f"serve --once exited {done.returncode}")
                return 1
            tags = set(reg.list_tags("containerdisks/fedora"))
            want = {"40", "40-1.14", "latest"}
            if not want <= tags:
                say(f"published tags {sorted(tags)} lack {want}")
                return 1
            # The volume holds the results file and the work dir (made 0700 inside it, since an
            # emptyDir is 0777); a spool or temp file left in either is a leak.
            left = sorted(p.name for p in work.iterdir())
            inner = work / "work"
            spools = sorted(p.name for p in inner.iterdir()) if inner.is_dir() else []
            if left != ["results.json", "work"] or spools:
                say(f"the volume holds {left}, work/ holds {spools}: not the results and no more")
                return 1
            if (mode := inner.stat().st_mode & 0o777) != 0o700:
                say(f"the work dir is {mode:o}, not 700")
                return 1
            say(f"ok, published {sorted(tags)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "localhost/containerdisks:ci"))
