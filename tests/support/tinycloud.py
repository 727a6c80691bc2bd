"""The tiny cloud images the verify tests boot, built from Debian packages in a few seconds.

`build_images(dir)` runs `tinycloud/build-tinycloud.sh` (kernel, busybox, dropbear; BIOS and
UEFI in one FAT image; `/init` plays cloud-init: the seed's keys for root, DHCP, dropbear) and
makes the variants the tests need: one whose `/init` ignores the seed (a wrong key), the Secure
Boot chain (Debian's signed shim and GRUB, unpacked by `scripts/fetch-test-debs`) and a disk
of garbage. Nothing is committed: the images are made per test session.

`qemu_processes(marker)` lists running qemu processes whose command line names `marker` (a
test's temporary directory): the leak check after every verify test.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent / "tinycloud"
SB_DIR = Path(
    os.environ.get(
        "CONTAINERDISKS_TEST_SB_DIR", Path.home() / ".cache" / "containerdisks-tests" / "sb"
    )
)
SHIM = "usr/lib/shim/shimx64.efi.signed"


@dataclass(frozen=True)
class Images:
    good: Path  # boots under BIOS and UEFI, takes the seed's key
    ignores_seed: Path  # boots, but root's key is not the seed's
    secure: Path  # shim -> signed GRUB -> signed kernel
    garbage: Path  # not bootable at all


def build_images(out: Path) -> Images:
    out.mkdir(parents=True, exist_ok=True)
    script = HERE / "build-tinycloud.sh"
    env = {**os.environ, "NAME": "tinycloud.qcow2"}
    subprocess.run([script, out], check=True, capture_output=True, timeout=120, env=env)
    env = {**env, "NAME": "ignores-seed.qcow2", "IGNORE_SEED": "1"}
    subprocess.run([script, out], check=True, capture_output=True, timeout=120, env=env)
    if not (SB_DIR / SHIM).is_file():
        raise RuntimeError(
            f"Secure Boot test files missing in {SB_DIR}: run scripts/fetch-test-debs "
            "(.ci/run does)"
        )
    subprocess.run(
        [HERE / "make-sb-variant.sh", out / "tinycloud.qcow2", out / "secure.qcow2", SB_DIR],
        check=True,
        capture_output=True,
        timeout=120,
    )
    garbage = out / "garbage.img"
    garbage.write_bytes(os.urandom(1 << 20) * 4)
    return Images(
        out / "tinycloud.qcow2", out / "ignores-seed.qcow2", out / "secure.qcow2", garbage
    )


def qemu_processes(marker: str) -> list[str]:
    """Command lines of live qemu-system processes that mention `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in argv if a)
        if "qemu-system" in line and marker in line:
            found.append(line)
    return found
