"""CI's container stage, last step: the built image runs `serve --once` against a test registry.

One job: start the same real parts the tests use (Debian's docker-registry on a free loopback
port, a loopback upstream serving Fedora's releases.json with real tiny qcow2 images and, beside
each image, the clearsigned CHECKSUM it is verified against — signed by a key made here and added
to the `fedora-40` keyring by a mounted config file, so the image's own gpgv checks it), run the
image with podman — read-only root filesystem, a work dir mounted from the host (a pod's
emptyDir), host network — and check that it exits 0, that skopeo sees the published tags and that
the work dir holds the results file and nothing else. Prints one line per step; exit 0 on success.

    python .ci/container_smoke.py IMAGE
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from tests.support.disks import FEDORA_URL, fedora_tree
from tests.support.registry import start_registry
from tests.support.upstream_server import UpstreamServer, put, tree_path

_RUN_TIMEOUT = 300


def say(line: str) -> None:
    sys.stdout.write(f"container smoke: {line}\n")
    sys.stdout.flush()


def sign_fedora_40(up: Path, keys: Path) -> str:
    """Clearsign a CHECKSUM beside every Fedora 40 image in the tree `up`, as Fedora lays it
    out; the key is made in `keys` (exported as `keys/smoke.gpg`); returns its fingerprint."""
    home = keys / "gnupg"
    home.mkdir(mode=0o700, parents=True)
    gpg = ["gpg", "--batch", "--homedir", str(home), "--passphrase", ""]

    def run(*args: str, data: bytes | None = None) -> bytes:
        return subprocess.run(  # noqa: S603 - gpg with our own arguments
            [*gpg, *args], input=data, capture_output=True, check=True, timeout=60
        ).stdout

    run("--quick-gen-key", "Smoke <smoke@test.invalid>", "ed25519", "sign", "never")
    listing = run("--with-colons", "--list-keys").decode()
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    (keys / "smoke.gpg").write_bytes(run("--export", fpr))
    for item in json.loads(tree_path(up, FEDORA_URL).read_text()):
        found = re.fullmatch(
            r"(.*/)Fedora-Cloud-Base-Generic\.(\w+)-40-([\d.]+)\.qcow2", item["link"]
        )
        if item["version"] != "40" or found is None:
            continue
        base, arch, release = found.groups()
        name = item["link"].rsplit("/", 1)[1]
        digest = hashlib.sha256(tree_path(up, item["link"]).read_bytes()).hexdigest()
        body = f"# {name}: {item.get('size', 0)} bytes\nSHA256 ({name}) = {digest}\n"
        signed = run("--local-user", fpr, "--clearsign", "--output", "-", data=body.encode())
        put(up, f"{base}Fedora-Cloud-40-{release}-{arch}-CHECKSUM", signed)
    subprocess.run(  # noqa: S603 - gpgconf with our own arguments
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],  # noqa: S607
        check=False,
        timeout=60,
    )
    return fpr


def main(image: str) -> int:
    with tempfile.TemporaryDirectory(prefix="containerdisks-smoke-") as tmp:
        root = Path(tmp)
        fedora_tree(root / "up")
        keys = root / "keys"  # mounted read-only at /etc/containerdisks
        fpr = sign_fedora_40(root / "up", keys)
        keyring = {"file": "/etc/containerdisks/smoke.gpg", "fingerprint": fpr}
        (keys / "config.yaml").write_text(
            yaml.safe_dump({"upstream_keys": {"fedora-40": [keyring]}})
        )
        for path in keys.iterdir():
            if path.is_file():
                path.chmod(0o644)  # the image's user reads them
        keys.chmod(0o755)
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
                "--volume", f"{keys}:/etc/containerdisks:ro",
                image,
                "--once",
                "--config", "/etc/containerdisks/config.yaml",
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
            # work/ keeps one state file, the newest signature time accepted per entry (a
            # mirror's rollback is refused); any other file there is a spool or temp file left
            state = inner / "upstream-signatures.json"
            spools = sorted(p.name for p in inner.iterdir() if p != state) if inner.is_dir() else []
            if left != ["results.json", "work"] or spools:
                say(f"the volume holds {left}, work/ holds {spools}: not the results and no more")
                return 1
            if "fedora:40" not in state.read_text():
                say(f"{state.name} does not record the signed fedora:40 checksum")
                return 1
            if (mode := inner.stat().st_mode & 0o777) != 0o700:
                say(f"the work dir is {mode:o}, not 700")
                return 1
            say(f"ok, published {sorted(tags)} from CHECKSUM files signed by {fpr}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "localhost/containerdisks:ci"))
