"""The qemu command line per firmware and arch, and what the host can boot; the boots
themselves are in test_verify_local.py."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from containerdisks.verify import qemu

_FILES = qemu.Handed(disk=10, overlay=11, seed=12, serial=13, code=14, vars=15)


def _argv(firmware: qemu.Firmware, goarch: str = "amd64", kvm: bool = False) -> list[str]:
    return qemu.command_line(
        goarch=goarch,
        name="/work/verify/tiny-1-x",
        files=_FILES if firmware != "bios" else qemu.Handed(10, 11, 12, 13),
        disk_format="qcow2",
        ssh_port=2222,
        firmware=firmware,
        kvm=kvm,
        memory_mib=1024,
    )


def _line(firmware: qemu.Firmware, goarch: str = "amd64", kvm: bool = False) -> str:
    return " ".join(_argv(firmware, goarch, kvm))


def _blockdevs(argv: list[str]) -> dict[str, dict[str, object]]:
    nodes = [json.loads(v) for k, v in itertools.pairwise(argv) if k == "-blockdev"]
    return {n["node-name"]: n for n in nodes}


def test_uefi_uses_pflash_with_a_private_vars_copy() -> None:
    argv = _argv("uefi")
    line = " ".join(argv)
    assert "-machine q35,pflash0=code,pflash1=vars " in line
    nodes = _blockdevs(argv)
    assert {"driver": "file", "node-name": "code-file", "filename": "/dev/fdset/5",
            "read-only": True} == nodes["code-file"]  # fmt: skip
    assert {"driver": "file", "node-name": "vars-file", "filename": "/dev/fdset/6"} == nodes[
        "vars-file"
    ]
    assert "-add-fd fd=14,set=5,opaque=code -add-fd fd=15,set=6,opaque=vars" in line
    assert "secure=on" not in line
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in line
    assert "-accel tcg" in line
    assert "-no-reboot" in line


def test_qemu_opens_no_path_only_the_fds_it_is_handed() -> None:
    argv = _argv("uefi")
    assert ["fd=10,set=1,opaque=disk", "fd=11,set=2,opaque=overlay", "fd=12,set=3,opaque=seed",
            "fd=13,set=4,opaque=serial", "fd=14,set=5,opaque=code", "fd=15,set=6,opaque=vars"] == [
        v for k, v in itertools.pairwise(argv) if k == "-add-fd"
    ]  # fmt: skip
    files = [n["filename"] for n in _blockdevs(argv).values() if "filename" in n]
    assert [f"/dev/fdset/{n}" for n in (5, 6, 1, 2, 3)] == files
    assert "file,id=serial0,path=/dev/fdset/4" == argv[argv.index("-chardev") + 1]
    assert "-drive" not in argv  # -drive would let qemu open by name, probe, follow backing
    assert "rng-builtin,id=rng0" == argv[argv.index("-object") + 1]  # not /dev/urandom by name
    assert "guest=/work/verify/tiny-1-x" == argv[argv.index("-name") + 1]


def test_the_disk_has_no_backing_and_the_guest_writes_to_our_overlay() -> None:
    nodes = _blockdevs(_argv("bios"))
    assert {"driver": "qcow2", "node-name": "base", "file": "base-file", "read-only": True,
            "backing": None} == nodes["base"]  # fmt: skip
    assert {"driver": "file", "node-name": "base-file", "filename": "/dev/fdset/1",
            "read-only": True} == nodes["base-file"]  # fmt: skip
    assert {"driver": "qcow2", "node-name": "disk0", "file": "disk0-file", "backing": "base"} == (
        nodes["disk0"]
    )
    assert not any("data-file" in n for n in nodes.values())
    raw = qemu.command_line(
        goarch="amd64", name="x", files=qemu.Handed(10, 11, 12, 13), disk_format="raw",
        ssh_port=2222, firmware="bios", kvm=False, memory_mib=512,
    )  # fmt: skip
    assert {"driver": "raw", "node-name": "base", "file": "base-file", "read-only": True} == (
        _blockdevs(raw)["base"]
    )


def test_the_sandbox_and_the_restricted_network() -> None:
    argv = _argv("bios")
    assert (
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        == argv[argv.index("-sandbox") + 1]
    )
    assert (
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22" == argv[argv.index("-netdev") + 1]
    )


def test_root_drops_to_the_qemu_user_and_others_run_qemu_as_themselves() -> None:
    nobody = qemu.Account("nobody", 65534, 65534)
    assert ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs",
            "--pdeathsig", "KILL", "--"] == qemu.launcher(nobody)  # fmt: skip
    assert "--groups=108" in qemu.launcher(nobody, [108])  # /dev/kvm's group, and only it
    assert "--clear-groups" not in qemu.launcher(nobody, [108])
    assert ["setpriv", "--no-new-privs", "--pdeathsig", "KILL", "--"] == qemu.launcher(None)


@pytest.mark.skipif(os.geteuid() != 0, reason="who qemu runs as changes only for root")
def test_the_qemu_user_is_looked_up_and_never_root() -> None:
    assert qemu.Account("nobody", 65534, 65534) == qemu.qemu_account("nobody")
    with pytest.raises(qemu.QemuError) as e:
        qemu.qemu_account("root")
    assert "verify_qemu_user 'root': is root or in group root; qemu must not be" == str(e.value)
    with pytest.raises(qemu.QemuError, match="verify_qemu_user 'no-such-user': no such user"):
        qemu.qemu_account("no-such-user")


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root")
def test_a_verifier_that_is_not_root_keeps_its_user() -> None:
    assert qemu.qemu_account("nobody") is None


def test_secure_boot_has_smm_and_the_microsoft_keys() -> None:
    line = _line("secure")
    assert "-machine q35,smm=on,pflash0=code,pflash1=vars " in line
    assert "driver=cfi.pflash01,property=secure,value=on" in line
    assert qemu.firmware_vars("amd64", "secure") == Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")


def test_bios_has_no_firmware_files(tmp_path: Path) -> None:
    line = _line("bios", kvm=True)
    assert "pflash" not in line
    assert "opaque=code" not in line
    assert "-accel kvm" in line
    assert qemu.firmware_vars("amd64", "bios") is None


def test_the_header_says_the_format_and_the_size_and_refuses_a_data_file(tmp_path: Path) -> None:
    def header(path: Path) -> qemu.DiskHeader:
        fd = os.open(path, os.O_RDONLY)
        try:
            return qemu.read_header(fd, path.name)
        finally:
            os.close(fd)

    raw = tmp_path / "raw.img"
    raw.write_bytes(b"QFI" + b"\0" * 509)  # almost the magic: raw
    assert qemu.DiskHeader("raw", 512) == header(raw)
    made = tmp_path / "made.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", made, "3G"], check=True)
    assert qemu.DiskHeader("qcow2", 3 << 30) == header(made)
    data = tmp_path / "data.raw"
    external = tmp_path / "external.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={data}", external, "1M"],
        check=True,
    )
    with pytest.raises(qemu.QemuError) as e:
        header(external)
    assert "external.qcow2: the qcow2 header names an external data file; not booted" == str(
        e.value
    )


def test_what_the_host_cannot_boot() -> None:
    host = qemu.Host("amd64", kvm=False)
    assert "no local emulator for s390x" == host.cannot_boot("s390x")
    assert host.cannot_boot("amd64") is None
    assert not host.accelerated("amd64", "auto")
    assert qemu.Host("amd64", kvm=True).accelerated("amd64", "auto")
    assert not qemu.Host("amd64", kvm=True).accelerated("amd64", "tcg")
    assert not qemu.Host("amd64", kvm=True).accelerated("arm64", "auto")  # emulated: TCG


def test_arm64_boots_uefi_only() -> None:
    with pytest.raises(qemu.QemuError, match="arm64 boots UEFI only"):
        _line("bios", goarch="arm64")


@pytest.mark.skipif(
    shutil.which("qemu-system-aarch64") is not None, reason="this host can emulate arm64"
)
def test_arm64_without_its_emulator_cannot_boot() -> None:
    assert "qemu-system-aarch64 is not installed" == qemu.Host("amd64", False).cannot_boot("arm64")


@pytest.mark.skipif(Path("/usr/share/AAVMF/AAVMF_CODE.fd").exists(), reason="AAVMF is installed")
def test_missing_firmware_is_one_line_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(qemu.QemuError) as e:
        qemu.firmware_vars("arm64", "uefi")
    assert "no UEFI firmware for arm64 found (install ovmf)" == str(e.value)
