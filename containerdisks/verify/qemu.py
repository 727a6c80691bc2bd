"""One local VM under qemu: what this host can boot, the command line, and the process.

A VM is an async context manager: it starts qemu and always stops it (SIGTERM, then SIGKILL)
when the block ends, on success, failure, timeout or cancellation. qemu is started under
`setpriv --pdeathsig KILL` where util-linux has it, so even a SIGKILLed verifier leaves no VM.

Decisions:
- KVM only when `/dev/kvm` opens read-write and the CPU advertises virtualisation; otherwise TCG
  (a `/dev/kvm` node without VT-x makes `-accel kvm` spin at 100 % sys, `local-tools.md` §3).
- q35, as KubeVirt; UEFI from OVMF in pflash with a per-VM copy of the vars file; Secure Boot
  with SMM and the Microsoft-keys vars (`.ms`), as KubeVirt's `efi.secureBoot`; BIOS = SeaBIOS.
- The disk under test is attached with `snapshot=on` (the pulled image is never written), its
  format given explicitly from its magic (no probing); the seed as a read-only virtio disk, as
  KubeVirt's `cloudInitNoCloud`; virtio-rng, as medius's VM; user networking with SSH forwarded
  to a loopback port only; `-no-reboot` so that a panic or a failed boot ends qemu.
- The serial console goes to a file that `failure()` reads for the signs of a boot that cannot
  succeed (no bootable device, Secure Boot refusal, kernel panic): those end the wait early.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import structlog

__all__ = [
    "Firmware",
    "Host",
    "QemuError",
    "VirtualMachine",
    "disk_format",
    "free_port",
    "probe_host",
]

log = structlog.get_logger(__name__)

Firmware = Literal["bios", "uefi", "secure"]
Accel = Literal["auto", "kvm", "tcg"]

_STOP_GRACE = 5.0
_QCOW2_MAGIC = b"QFI\xfb"

#: Signs in the serial log that the boot cannot succeed, and how to say it.
_FATAL_MARKS = (
    ("Access Denied", "Secure Boot refused the boot loader"),
    ("No bootable device", "the firmware found no bootable disk"),
    ("No bootable option or device was found", "the firmware found no bootable disk"),
    ("UEFI Interactive Shell", "the firmware found no bootable disk (it started the UEFI shell)"),
    ("Kernel panic", "kernel panic"),
)

# Firmware files by goarch, in the order looked for: Debian, Fedora, Arch/SUSE layouts.
_UEFI: dict[str, tuple[tuple[str, str], ...]] = {
    "amd64": (
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ),
    "arm64": (
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        (
            "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
            "/usr/share/edk2/aarch64/vars-template-pflash.raw",
        ),
    ),
}
_SECURE: dict[str, tuple[tuple[str, str], ...]] = {
    "amd64": (
        ("/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
        ("/usr/share/OVMF/OVMF_CODE.ms.fd", "/usr/share/OVMF/OVMF_VARS.ms.fd"),
        ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"),
    ),
    "arm64": (("/usr/share/AAVMF/AAVMF_CODE.ms.fd", "/usr/share/AAVMF/AAVMF_VARS.ms.fd"),),
}
_BINARY = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
_HOST_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class QemuError(Exception):
    """qemu could not be started, or this host cannot boot the image; one line."""


@dataclass(frozen=True)
class Host:
    """What this host can boot."""

    goarch: str
    kvm: bool

    def cannot_boot(self, goarch: str) -> str | None:
        """Why an image of `goarch` cannot be booted here, or None."""
        if goarch not in _BINARY:
            return f"no local emulator for {goarch}"
        if shutil.which(_BINARY[goarch]) is None:
            return f"{_BINARY[goarch]} is not installed"
        return None

    def accelerated(self, goarch: str, accel: Accel) -> bool:
        if accel == "tcg" or goarch != self.goarch:
            return False
        if accel == "kvm":
            return True
        return self.kvm


def _kvm_usable(goarch: str) -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    if goarch != "amd64":
        return True
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = {w for line in cpuinfo.splitlines() if line.startswith("flags") for w in line.split()}
    return bool(flags & {"vmx", "svm"})


def probe_host() -> Host:
    goarch = _HOST_GOARCH.get(platform.machine().lower(), platform.machine().lower())
    return Host(goarch, _kvm_usable(goarch))


def free_port() -> int:
    """A free loopback TCP port (bind 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def disk_format(path: Path) -> Literal["qcow2", "raw"]:
    """qcow2 by its magic, raw otherwise: never let qemu probe a format."""
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == _QCOW2_MAGIC else "raw"


def _firmware_files(goarch: str, firmware: Firmware) -> tuple[str, str] | None:
    table = _SECURE if firmware == "secure" else _UEFI
    for code, variables in table.get(goarch, ()):
        if Path(code).is_file() and Path(variables).is_file():
            return code, variables
    return None


def _require_firmware(goarch: str, firmware: Firmware) -> tuple[str, str]:
    files = _firmware_files(goarch, firmware)
    if files is None:
        what = "Secure Boot " if firmware == "secure" else ""
        raise QemuError(f"no {what}UEFI firmware for {goarch} found (install ovmf)")
    return files


def command_line(
    *,
    goarch: str,
    disk: Path,
    seed: Path,
    serial_log: Path,
    ssh_port: int,
    firmware: Firmware,
    vars_copy: Path | None,
    kvm: bool,
    memory_mib: int,
) -> list[str]:
    """The qemu command for one VM (the firmware's vars file already copied to `vars_copy`)."""
    if goarch == "amd64":
        machine = "q35,smm=on" if firmware == "secure" else "q35"
        args = [_BINARY[goarch], "-machine", machine]
        if not kvm:
            args += ["-cpu", "max"]
    elif goarch == "arm64":
        if firmware == "bios":
            raise QemuError("arm64 boots UEFI only")
        args = [_BINARY[goarch], "-machine", "virt", "-cpu", "host" if kvm else "max"]
    else:
        raise QemuError(f"no local emulator for {goarch}")
    args += ["-accel", "kvm" if kvm else "tcg", "-m", str(memory_mib), "-smp", "2" if kvm else "1"]
    args += ["-nographic", "-no-reboot", "-monitor", "none", "-serial", f"file:{serial_log}"]
    if firmware != "bios":
        files = _require_firmware(goarch, firmware)
        assert vars_copy is not None
        if firmware == "secure":
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        args += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={files[0]}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]  # fmt: skip
    args += [
        "-drive", f"file={disk},format={disk_format(disk)},if=none,id=disk0,snapshot=on",
        "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
        "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-boot", "strict=on",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
    ]  # fmt: skip
    return args


def firmware_vars(goarch: str, firmware: Firmware) -> Path | None:
    """The vars template to copy per VM (None for BIOS)."""
    if firmware == "bios":
        return None
    return Path(_require_firmware(goarch, firmware)[1])


class VirtualMachine:
    """A running qemu; `async with` starts it and always stops it."""

    def __init__(self, command: Sequence[str], serial_log: Path, ssh_port: int) -> None:
        self.command = list(command)
        self.serial_log = serial_log
        self.ssh_host = "127.0.0.1"
        self.ssh_port = ssh_port
        self._process: asyncio.subprocess.Process | None = None
        self._stderr = b""
        self._stderr_task: asyncio.Task[None] | None = None
        self._read_at = 0
        self._seen = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def __aenter__(self) -> VirtualMachine:
        wrapper = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        try:
            self._process = await asyncio.create_subprocess_exec(
                *wrapper,
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not qemu directly
            )
        except OSError as e:
            raise QemuError(f"cannot start {self.command[0]}: {e.strerror or e}") from None
        self._stderr_task = asyncio.create_task(self._collect_stderr())
        log.info("vm_started", pid=self._process.pid, ssh_port=self.ssh_port)
        return self

    async def _collect_stderr(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        while chunk := await self._process.stderr.read(4096):
            self._stderr = (self._stderr + chunk)[-4096:]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancellation (a signal, a timeout) must not leave qemu running.
        await asyncio.shield(self._stop())

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        log.info("vm_stopped", pid=process.pid, returncode=process.returncode)

    def serial_text(self) -> str:
        """All the serial console said so far (read incrementally)."""
        try:
            with self.serial_log.open("rb") as f:
                f.seek(self._read_at)
                data = f.read()
        except FileNotFoundError:
            return self._seen
        self._read_at += len(data)
        self._seen += data.decode("utf-8", errors="replace")
        return self._seen

    def failure(self) -> str | None:
        """Why this boot can no longer succeed, or None while it still may."""
        text = self.serial_text()
        for mark, why in _FATAL_MARKS:
            if mark in text:
                return why
        process = self._process
        if process is not None and process.returncode is not None:
            said = self._stderr.decode(errors="replace").strip().splitlines()
            tail = f": {said[-1]}" if said else ""
            return f"qemu exited with status {process.returncode}{tail}"
        return None
