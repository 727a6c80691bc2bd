"""The tiny cloud images the verify tests boot, built from Debian packages in a few seconds.

`build_images(dir)` runs `tinycloud/build-tinycloud.sh` (kernel, busybox, dropbear; BIOS and
UEFI in one FAT image; `/init` plays cloud-init: the seed's keys for root, DHCP, dropbear) and
makes the variants the tests need: one whose `/init` ignores the seed (a wrong key), the Secure
Boot chain (Debian's signed shim and GRUB, unpacked by `scripts/fetch-test-debs`) and a disk
of garbage. Nothing is committed: the images are made per test session.

`build_dump_image(dir, mib)` makes the opt-in "dump" variant (BIOS only) for the sandbox tests:
its `/init` prints the disk's bytes at `mib` MiB and the answer of the seed's probe URL between
markers (`dump_report` reads them back), then powers off.

`qemu_processes(marker)` lists running qemu processes whose command line names `marker` (a
test's temporary directory): the leak check after every verify test.
"""

from __future__ import annotations

import os
import re
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


def build_dump_image(out: Path, mib: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NAME": "dump.qcow2", "DUMP_MIB": str(mib), "UEFI": "0"}
    subprocess.run(
        [HERE / "build-tinycloud.sh", out], check=True, capture_output=True, timeout=120, env=env
    )
    return out / "dump.qcow2"


@dataclass(frozen=True)
class DumpReport:
    disk: str  # the device the guest read (empty: it found no disk labelled BOOT)
    read: int  # bytes it read at the offset
    got: str  # the printable bytes among them
    probe: str  # what the probe URL answered (empty: nothing)


_DUMP = re.compile(r"TINYCLOUD-DUMP disk=(\S*) at=\d+MiB read=(\d+) \[([^]]*)\] TINYCLOUD-DUMP-END")
_PROBE = re.compile(r"TINYCLOUD-PROBE url=\S* \[([^]]*)\] TINYCLOUD-PROBE-END")


def dump_report(serial: str) -> DumpReport | None:
    """What the dump variant reported on its serial console, once it reported it all."""
    dump, probe = _DUMP.search(serial), _PROBE.search(serial)
    if dump is None or probe is None:
        return None
    return DumpReport(dump[1], int(dump[2]), dump[3], probe[1])


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
