"""The tiny cloud images the verify tests boot, built from Debian packages in a few seconds.

`build_images(dir)` runs `tinycloud/build-tinycloud.sh` (kernel, busybox, dropbear; BIOS and
UEFI in one FAT image; `/init` plays cloud-init: the seed's keys for root, DHCP, dropbear) and
makes the variants the tests need: one whose `/init` ignores the seed (a wrong key), the Secure
Boot chain (Debian's signed shim and GRUB, unpacked by `scripts/fetch-test-debs`) and a disk
of garbage. Nothing is committed: the images are made per test session.

The Secure Boot files are fetched by the session itself when they are not there yet
(`secure_boot_files()` runs `scripts/fetch-test-debs` into its cache, as `.ci/run` does); when
apt cannot get them (no network, no package lists), `Images.secure` is None and
`Images.secure_missing` says why, so the one test that boots the signed chain skips with that
reason and every other verify test runs.

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
GRUB = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
FETCH = Path(__file__).parents[2] / "scripts" / "fetch-test-debs"
FETCH_TIMEOUT = 300  # seconds for apt to download two packages (about 2 MB)


@dataclass(frozen=True)
class Images:
    good: Path  # boots under BIOS and UEFI, takes the seed's key
    ignores_seed: Path  # boots, but root's key is not the seed's
    secure: Path | None  # shim -> signed GRUB -> signed kernel; None: see secure_missing
    garbage: Path  # not bootable at all
    secure_missing: str = ""  # why there is no Secure Boot image (one line)


def secure_boot_files(sb_dir: Path = SB_DIR) -> str:
    """Make sure Debian's signed shim and GRUB are unpacked in `sb_dir` (fetching them with
    `scripts/fetch-test-debs` when they are not); "" when they are there, else why not."""
    if (sb_dir / SHIM).is_file() and (sb_dir / GRUB).is_file():
        return ""
    try:
        done = subprocess.run(
            [FETCH, sb_dir], capture_output=True, text=True, timeout=FETCH_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"Secure Boot test files missing in {sb_dir}; {FETCH.name} failed: {e}"
    if done.returncode != 0 or not (sb_dir / SHIM).is_file():
        said = [line for line in done.stderr.splitlines() if line.strip()]
        last = said[-1].strip() if said else f"exit {done.returncode}"
        return (
            f"Secure Boot test files missing in {sb_dir}; {FETCH.name} (apt-get download "
            f"shim-signed grub-efi-amd64-signed) failed: {last}"
        )
    return ""


def build_images(out: Path) -> Images:
    out.mkdir(parents=True, exist_ok=True)
    script = HERE / "build-tinycloud.sh"
    env = {**os.environ, "NAME": "tinycloud.qcow2"}
    subprocess.run([script, out], check=True, capture_output=True, timeout=120, env=env)
    env = {**env, "NAME": "ignores-seed.qcow2", "IGNORE_SEED": "1"}
    subprocess.run([script, out], check=True, capture_output=True, timeout=120, env=env)
    garbage = out / "garbage.img"
    garbage.write_bytes(os.urandom(1 << 20) * 4)
    good, ignores = out / "tinycloud.qcow2", out / "ignores-seed.qcow2"
    missing = secure_boot_files()
    if missing:
        return Images(good, ignores, None, garbage, missing)
    subprocess.run(
        [HERE / "make-sb-variant.sh", good, out / "secure.qcow2", SB_DIR],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Images(good, ignores, out / "secure.qcow2", garbage)


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
