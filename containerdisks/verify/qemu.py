"""One local VM under qemu: what this host can boot, the command line, and the process.

A VM is an async context manager: it starts qemu and always stops it (SIGTERM, then SIGKILL)
when the block ends, on success, failure, timeout or cancellation. qemu is started under
`setpriv --pdeathsig KILL` where util-linux has it, so even a SIGKILLed verifier leaves no VM.
`boot()` is the whole of one boot: it opens the files, starts the VM and closes them again.

Decisions:
- KVM only when `/dev/kvm` opens read-write and the CPU advertises virtualisation; otherwise TCG
  (a `/dev/kvm` node without VT-x makes `-accel kvm` spin at 100 % sys).
- q35, as KubeVirt; UEFI from OVMF in pflash with a per-VM copy of the vars file; Secure Boot
  with SMM and the Microsoft-keys vars (`.ms`), as KubeVirt's `efi.secureBoot`; BIOS = SeaBIOS.
- The disk under test is hostile until booted: qemu opens no file by a name the image chose.
  Every file qemu uses (disk, overlay, seed, firmware, vars, serial log) is opened by us and
  inherited as a file descriptor (`-add-fd`, `/dev/fdset/N`), so qemu needs no access to the
  (0700, root's) work dir. The disk is a read-only `-blockdev` node of the format its magic
  says (no probing), a qcow2 with `backing: null`; a qcow2 whose header names an external data
  file is refused (qemu would open that name itself, and blockdev cannot say "none"). The
  guest's writes go to a fresh qcow2 overlay we make (what `snapshot=on` did, minus the temp
  file qemu would open in /var/tmp).
- Run by root, qemu runs as `verify_qemu_user` (default `nobody`; `--groups` the owner group
  of `/dev/kvm` with KVM), under `no_new_privs`, and with its seccomp sandbox denying
  obsolete calls, privilege changes, fork/exec and resource control. A qemu without seccomp
  support fails to start, and the entry fails with qemu's words: never an unsandboxed boot.
- The seed is a read-only virtio disk, as KubeVirt's `cloudInitNoCloud`; virtio-rng fed by
  qemu's own `getrandom` (no file); user networking `restrict=on` (the guest reaches neither
  the host nor the world) with SSH forwarded to a loopback port only; `-no-reboot` so that a
  panic or a failed boot ends qemu; `-name` is the boot directory, for `ps` and leak checks.
- The serial console goes to a file that `failure()` reads for the signs of a boot that cannot
  succeed (no bootable device, Secure Boot refusal, kernel panic): those end the wait early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import pwd
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Literal

import structlog

from containerdisks.pipeline.diskcheck import disk_format
from containerdisks.verify.finish import to_the_end
from containerdisks.verify.flow import BootError

__all__ = [
    "Account",
    "DiskHeader",
    "Firmware",
    "Handed",
    "Host",
    "QemuError",
    "VirtualMachine",
    "boot",
    "command_line",
    "free_port",
    "launcher",
    "probe_host",
    "qemu_account",
    "read_header",
]

log = structlog.get_logger(__name__)

Firmware = Literal["bios", "uefi", "secure"]
Accel = Literal["auto", "kvm", "tcg"]

_STOP_GRACE = 5.0
_QCOW2_DATA_FILE = 1 << 2  # incompatible feature bit: the data lives in an external file
_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

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


class QemuError(BootError):
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


@dataclass(frozen=True)
class DiskHeader:
    """What qemu is told about the disk: its format and the size the guest sees."""

    format: Literal["qcow2", "raw"]
    virtual_size: int


def read_header(fd: int, name: str) -> DiskHeader:
    """qcow2 by its magic, raw otherwise (never let qemu probe a format); a qcow2 that keeps its
    data in an external file is refused, naming `name`."""
    head = os.pread(fd, 80, 0)
    if disk_format(head) == "raw":
        return DiskHeader("raw", os.fstat(fd).st_size)
    version = int.from_bytes(head[4:8], "big")
    incompatible = int.from_bytes(head[72:80], "big") if version >= 3 else 0
    if incompatible & _QCOW2_DATA_FILE:
        raise QemuError(f"{name}: the qcow2 header names an external data file; not booted")
    return DiskHeader("qcow2", int.from_bytes(head[24:32], "big"))


@dataclass(frozen=True)
class Handed:
    """The file descriptors qemu inherits: every file it touches, opened by us."""

    disk: int  # read-only: the image under test
    overlay: int  # read-write: a fresh qcow2 that takes the guest's writes
    seed: int  # read-only
    serial: int  # write-only: the serial console
    code: int | None = None  # read-only: UEFI firmware
    vars: int | None = None  # read-write: this VM's copy of the UEFI variables

    def fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in astuple(self) if fd is not None)


@dataclass(frozen=True)
class Account:
    """The unprivileged account qemu runs as when the verifier is root."""

    name: str
    uid: int
    gid: int


def qemu_account(user: str) -> Account | None:
    """Whom qemu runs as: None (as we are) unless we are root, then `user`, never root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise QemuError(f"verify_qemu_user {user!r}: no such user on this host") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise QemuError(f"verify_qemu_user {user!r}: is root or in group root; qemu must not be")
    return Account(user, entry.pw_uid, entry.pw_gid)


def launcher(account: Account | None, groups: Sequence[int] = ()) -> list[str]:
    """The `setpriv` prefix: parent-death signal, no new privileges, and the drop to `account`
    (with supplementary `groups` only, e.g. /dev/kvm's) when given."""
    if shutil.which("setpriv") is None:
        if account is not None:
            raise QemuError(f"setpriv (util-linux) is needed to run qemu as {account.name}")
        return []
    args = ["setpriv"]
    if account is not None:
        args += [f"--reuid={account.uid}", f"--regid={account.gid}"]
        args += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return [*args, "--no-new-privs", "--pdeathsig", "KILL", "--"]


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


def _blockdev(**options: object) -> list[str]:
    return ["-blockdev", json.dumps(options, separators=(",", ":"))]


def _node(
    name: str, fdset: int, driver: str, *, read_only: bool, **format_options: object
) -> list[str]:
    """A format node over a file node that opens `/dev/fdset/<fdset>` (an inherited fd)."""
    ro = {"read-only": True} if read_only else {}
    return [
        *_blockdev(
            driver="file", **{"node-name": f"{name}-file"}, filename=f"/dev/fdset/{fdset}", **ro
        ),
        *_blockdev(
            driver=driver, **{"node-name": name}, file=f"{name}-file", **ro, **format_options
        ),
    ]


def command_line(
    *,
    goarch: str,
    name: str,
    files: Handed,
    disk_format: Literal["qcow2", "raw"],
    ssh_port: int,
    firmware: Firmware,
    kvm: bool,
    memory_mib: int,
) -> list[str]:
    """The qemu command for one VM, every file given as one of the inherited fds in `files`."""
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
    handed = {f.name: getattr(files, f.name) for f in fields(files)}
    fdset = {role: n for n, (role, fd) in enumerate(handed.items(), start=1) if fd is not None}
    for role, n in fdset.items():
        args += ["-add-fd", f"fd={handed[role]},set={n},opaque={role}"]
    args += ["-name", "guest=" + name.replace(",", ",,"), "-sandbox", _SANDBOX]
    args += ["-accel", "kvm" if kvm else "tcg", "-m", str(memory_mib), "-smp", "2" if kvm else "1"]
    args += [
        "-nographic", "-no-reboot", "-monitor", "none", "-serial", "chardev:serial0",
        "-chardev", f"file,id=serial0,path=/dev/fdset/{fdset['serial']}",
    ]  # fmt: skip
    if firmware != "bios":
        if "code" not in fdset or "vars" not in fdset:
            raise QemuError(f"{firmware} boots need the firmware and its vars file")
        if firmware == "secure":
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        args[2] += ",pflash0=code,pflash1=vars"
        args += _node("code", fdset["code"], "raw", read_only=True)
        args += _node("vars", fdset["vars"], "raw", read_only=False)
    base: dict[str, object] = {"backing": None} if disk_format == "qcow2" else {}
    args += _node("base", fdset["disk"], disk_format, read_only=True, **base)
    args += _node("disk0", fdset["overlay"], "qcow2", read_only=False, backing="base")
    args += _node("seed", fdset["seed"], "raw", read_only=True)
    args += [
        "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
        "-device", "virtio-blk-pci,drive=seed",
        "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-boot", "strict=on",
        "-object", "rng-builtin,id=rng0",
        "-device", "virtio-rng-pci,rng=rng0",
    ]  # fmt: skip
    return args


def firmware_vars(goarch: str, firmware: Firmware) -> Path | None:
    """The vars template to copy per VM (None for BIOS)."""
    if firmware == "bios":
        return None
    return Path(_require_firmware(goarch, firmware)[1])


async def _create_overlay(path: Path, size: int) -> None:
    """A fresh, empty qcow2 of `size` bytes (no backing file in it: blockdev names the base)."""
    process = await asyncio.create_subprocess_exec(
        "qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()
        raise QemuError(f"qemu-img create {path}: {said[-1] if said else process.returncode}")


@contextlib.asynccontextmanager
async def boot(
    *,
    goarch: str,
    disk: Path,
    seed: Path,
    work: Path,
    firmware: Firmware,
    kvm: bool,
    memory_mib: int,
    account: Account | None,
) -> AsyncIterator[VirtualMachine]:
    """One VM of `disk` with `seed`, its files made in `work` (ours, private) and handed to qemu
    as open fds; run as `account` when given. The fds are closed when the VM has stopped."""
    with contextlib.ExitStack() as opened:

        def hand(path: Path, flags: int) -> int:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
            opened.callback(os.close, fd)
            return fd

        here = os.O_NOFOLLOW  # the files in `work` are ours: never follow a link planted there
        disk_fd = hand(disk, os.O_RDONLY | here)
        header = read_header(disk_fd, disk.name)
        overlay = work / "overlay.qcow2"
        await to_the_end(_create_overlay(overlay, header.virtual_size))
        code = variables = None
        if firmware != "bios":
            code_path, template = _require_firmware(goarch, firmware)
            vars_copy = work / "vars.fd"
            # to the end: a copy still running must not create vars.fd after the cleanup
            await to_the_end(asyncio.to_thread(shutil.copyfile, template, vars_copy))
            code = hand(Path(code_path), os.O_RDONLY)  # the distribution's, often a symlink
            variables = hand(vars_copy, os.O_RDWR | here)
        serial = work / "serial.log"
        files = Handed(
            disk=disk_fd,
            overlay=hand(overlay, os.O_RDWR | here),
            seed=hand(seed, os.O_RDONLY | here),
            serial=hand(serial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | here),
            code=code,
            vars=variables,
        )
        groups = [os.stat("/dev/kvm").st_gid] if kvm and account is not None else []
        port = free_port()
        command = launcher(account, groups) + command_line(
            goarch=goarch,
            name=str(work),
            files=files,
            disk_format=header.format,
            ssh_port=port,
            firmware=firmware,
            kvm=kvm,
            memory_mib=memory_mib,
        )
        async with VirtualMachine(command, serial, port, files.fds()) as vm:
            yield vm


class VirtualMachine:
    """A running qemu; `async with` starts it and always stops it."""

    def __init__(
        self,
        command: Sequence[str],
        serial_log: Path,
        ssh_port: int,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.command = list(command)
        self.pass_fds = tuple(pass_fds)
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
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command,
                pass_fds=self.pass_fds,
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
