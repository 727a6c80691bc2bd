"""The verify tests' world: tiny bootable images published through the real `images push`
into the real registry from a loopback upstream, and `images verify --local` as a real process.

- `tiny_images` (session): the images of `tests.support.tinycloud`, built once;
  `secure_image` skips a test, with the reason, when the Secure Boot chain could not be had.
- `Published`: a catalog (a `--config` file of `static` entries, one per image: `tiny`,
  `tiny-sb` with Secure Boot (only when there is a Secure Boot image), `tiny-unsigned-sb` (the
  plain image under Secure Boot), `tiny-ignores` whose image ignores the seed, `tiny-garbage`, and
  `tiny-multi` for x86_64 and s390x, `tiny-nouser` without a login user as cirros), the
  upstream serving the images, the registry, and the
  results file push wrote; `verify(...)` runs the command.
- After every run of `verify(...)`: every qemu it started it stopped itself (log events), and
  its boot work dir is empty before any later run could tidy it; after every test: no qemu
  process of the test is alive, and the boot work dir is empty.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import clean_env
from tests.support.registry import Registry
from tests.support.tinycloud import Images, build_images, qemu_processes
from tests.support.upstream_server import UpstreamServer, put

HOST = "tiny.example"


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return build_images(tmp_path_factory.mktemp("tinycloud"))


@pytest.fixture
def secure_image(tiny_images: Images) -> Path:
    """The signed Secure Boot image, or a skip saying why there is none (no apt, no network)."""
    if tiny_images.secure is None:
        pytest.skip(tiny_images.secure_missing)
    return tiny_images.secure


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(name: str, image: Path, arches: list[str], **extra: Any) -> dict[str, Any]:
    url = f"https://{HOST}/{image.name}"
    return {
        "name": name,
        "version": "1",
        "arches": arches,
        "user": "root",
        "source": {
            "kind": "static",
            "per_arch": {a: {"url": url, "checksum": _sha256(image)} for a in arches},
        },
        **extra,
    }


@dataclass
class Published:
    root: Path
    registry: Registry
    upstream: UpstreamServer
    config: Path

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def target(self) -> str:
        return f"{self.registry.host}/cd"

    def read_results(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.results.read_text())
        return data

    def push(self, focus: str, *flags: str) -> dict[str, Any]:
        """`images push` of one entry (`flags` added: `--sign-key`); its record is merged into
        the results file (push itself rewrites the file with what it did, as medius)."""
        before = self.read_results() if self.results.exists() else {}
        command = [
            sys.executable, "-m", "containerdisks", "images", "push", "--dry-run=false",
            "--config", str(self.config), "--focus", focus,
            "--source-registry", self.target, "--results-file", str(self.results),
            "--work-dir", str(self.root / "push-work"), "--log-format", "json",
            *self.upstream.mirror_args(), *flags,
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=self.root
        )
        assert 0 == done.returncode, done.stderr
        merged = {**before, **self.read_results()}
        self.results.write_text(json.dumps(merged, indent=2))
        return merged

    def verify_command(self, *flags: str) -> list[str]:
        return [
            sys.executable, "-m", "containerdisks", "images", "verify", "--local",
            "--config", str(self.config), "--registry", self.target,
            "--results-file", str(self.results), "--work-dir", str(self.work),
            "--log-format", "json", *flags,
        ]  # fmt: skip

    def verify(self, *flags: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run the command; then check that it cleaned up after itself (not the next run)."""
        done = subprocess.run(
            self.verify_command(*flags),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            cwd=self.root,
        )
        assert_every_vm_stopped(done.stderr)
        boots = self.work / "verify"
        assert [] == (sorted(boots.iterdir()) if boots.exists() else []), done.stderr[-2000:]
        return done


def assert_every_vm_stopped(log: str) -> None:
    """Each qemu the run started was stopped by the run itself (its `vm_stopped` event), not by
    the kernel's parent-death signal when the process ended, which hides a missing cleanup."""
    started, stopped = set(), set()
    for line in log.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "vm_started":
                started.add(event["pid"])
            elif event.get("event") == "vm_stopped":
                stopped.add(event["pid"])
    assert started == stopped, f"qemu started {sorted(started)}, stopped {sorted(stopped)}"


@pytest.fixture
def published(tmp_path: Path, registry: Registry, tiny_images: Images) -> Iterator[Published]:
    up = tmp_path / "up"
    images = [tiny_images.good, tiny_images.ignores_seed, tiny_images.garbage]
    for image in images + ([tiny_images.secure] if tiny_images.secure else []):
        put(up, f"https://{HOST}/{image.name}", image)
    config = tmp_path / "catalog.yaml"
    entries = [
        _entry("tiny", tiny_images.good, ["x86_64"]),
        *(
            [_entry("tiny-sb", tiny_images.secure, ["x86_64"], secure_boot=True)]
            if tiny_images.secure
            else []
        ),
        _entry("tiny-unsigned-sb", tiny_images.good, ["x86_64"], secure_boot=True),
        _entry("tiny-ignores", tiny_images.ignores_seed, ["x86_64"]),
        _entry("tiny-garbage", tiny_images.garbage, ["x86_64"]),
        _entry("tiny-multi", tiny_images.good, ["x86_64", "s390x"]),
        {**_entry("tiny-nouser", tiny_images.good, ["x86_64"]), "user": None},  # as cirros
    ]
    config.write_text(yaml.safe_dump({"entries": entries, "verify_ssh_attempts": 3}))
    with UpstreamServer(up) as srv:
        yield Published(tmp_path, registry, srv, config)


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path: Path) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 10
    while qemu_processes(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [] == qemu_processes(str(tmp_path))
    boots = tmp_path / "work" / "verify"
    assert [] == (sorted(boots.iterdir()) if boots.exists() else [])
