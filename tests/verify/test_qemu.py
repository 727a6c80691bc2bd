"""The qemu command line per firmware and arch, and what the host can boot; the boots
themselves are in test_verify_local.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from containerdisks.verify import qemu


def _line(tmp_path: Path, firmware: qemu.Firmware, goarch: str = "amd64", kvm: bool = False) -> str:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"QFI\xfb" + b"\0" * 60)
    return " ".join(
        qemu.command_line(
            goarch=goarch,
            disk=disk,
            seed=tmp_path / "seed.iso",
            serial_log=tmp_path / "serial.log",
            ssh_port=2222,
            firmware=firmware,
            vars_copy=tmp_path / "vars.fd",
            kvm=kvm,
            memory_mib=1024,
        )
    )


def test_uefi_uses_pflash_with_a_private_vars_copy(tmp_path: Path) -> None:
    line = _line(tmp_path, "uefi")
    assert "-machine q35 " in line
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd" in line
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/vars.fd" in line
    assert "secure=on" not in line
    assert f"file={tmp_path}/disk.img,format=qcow2,if=none,id=disk0,snapshot=on" in line
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in line
    assert "-accel tcg" in line
    assert "-no-reboot" in line


def test_secure_boot_has_smm_and_the_microsoft_keys(tmp_path: Path) -> None:
    line = _line(tmp_path, "secure")
    assert "-machine q35,smm=on " in line
    assert "driver=cfi.pflash01,property=secure,value=on" in line
    assert "OVMF_CODE_4M.ms.fd" in line
    assert qemu.firmware_vars("amd64", "secure") == Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")


def test_bios_has_no_firmware_files_and_raw_disks_are_named_raw(tmp_path: Path) -> None:
    line = _line(tmp_path, "bios", kvm=True)
    assert "pflash" not in line
    assert "-accel kvm" in line
    assert qemu.firmware_vars("amd64", "bios") is None
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 512)
    assert "raw" == qemu.disk_format(raw)


def test_what_the_host_cannot_boot() -> None:
    host = qemu.Host("amd64", kvm=False)
    assert "no local emulator for s390x" == host.cannot_boot("s390x")
    assert host.cannot_boot("amd64") is None
    assert not host.accelerated("amd64", "auto")
    assert qemu.Host("amd64", kvm=True).accelerated("amd64", "auto")
    assert not qemu.Host("amd64", kvm=True).accelerated("amd64", "tcg")
    assert not qemu.Host("amd64", kvm=True).accelerated("arm64", "auto")  # emulated: TCG


def test_arm64_boots_uefi_only(tmp_path: Path) -> None:
    with pytest.raises(qemu.QemuError, match="arm64 boots UEFI only"):
        _line(tmp_path, "bios", goarch="arm64")


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
