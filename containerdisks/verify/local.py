"""Booting a pushed image on this host: pull its disk, write the seed, run it under qemu.

`LocalBooter.boot()` is the local way to get a `Guest` for the one verify flow in
`containerdisks.verify.flow`; KubeVirt is the other. Each boot has a private work directory
under `<work_dir>/verify/` (disk, seed, firmware vars, serial log) that is removed when the boot
ends, however it ends; a directory whose process was killed is removed by the next run (a lock
says which are still in use, so runs sharing a work dir leave each other alone). The serial log
of a failed boot is kept, under `<work_dir>/serial-logs/` (the newest 100), and its path is put
into the error so that a person can read why. The pulled disk's header is inspected before qemu
starts (`diskcheck`: an image in the registry may not have come from our push); a refused one
fails its entry as a `PullError` naming the field, and nothing is booted. A guest's console can
print anything it read (a secret, if a hostile image got one): the kept logs are 0600 in a 0700
directory, and so is `<work_dir>/verify/`. qemu itself runs as `verify_qemu_user` when we are
root (`qemu.boot`): it reaches the boot's files only through the fds we hand it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from containerdisks.engine.retry import Backoff
from containerdisks.engine.stores import Store
from containerdisks.pipeline.diskcheck import HEAD, refusal
from containerdisks.verify import qemu
from containerdisks.verify.finish import to_the_end
from containerdisks.verify.pull import PullError, pull_disk
from containerdisks.verify.seed import meta_data, write_seed
from containerdisks.verify.ssh import CheckFailedError, Guest
from containerdisks.verify.target import Target

__all__ = ["LocalBooter", "LocalError", "private_dir", "remove_stale_work"]

log = structlog.get_logger(__name__)


_LOCK = ".owner.lock"  # held (flock) by the process booting in that directory
_YOUNG = 60.0  # seconds a directory may still be waiting for its lock file to appear
KEPT_LOGS = 100  # serial logs of failed boots kept under <work_dir>/serial-logs


class LocalError(Exception):
    """A directory of the work dir that is not ours alone; one line naming it."""


def remove_stale_work(work_dir: Path) -> None:
    """Boot directories a killed predecessor left behind (their qemu died with it).

    Only directories nobody holds: each boot holds an flock on its directory's lock file for
    as long as it runs, and the kernel drops it when the process dies, however it dies. Another
    verify run sharing the work dir keeps its boots.
    """
    root = work_dir / "verify"
    if not root.is_dir():
        return
    for child in root.iterdir():
        try:
            fd = os.open(child / _LOCK, os.O_RDONLY)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - child.stat().st_mtime < _YOUNG:
                    continue  # just created: its owner is about to lock it
            shutil.rmtree(child, ignore_errors=True)
            continue
        except (NotADirectoryError, PermissionError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run's boot
        else:
            shutil.rmtree(child, ignore_errors=True)
        finally:
            os.close(fd)


def private_dir(path: Path) -> None:
    """`path` as a directory only we can enter (0700): made so, or an existing one of ours made
    so (an older version left it 0755: fixing it hides what it holds at once). A link, a file,
    or a directory of another user is refused (`LocalError`): we would be writing where
    someone else decides."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise LocalError(f"{path} is not a directory (a link or a file); not writing into it")
    if st.st_uid != os.geteuid():
        raise LocalError(f"{path} belongs to uid {st.st_uid}, not to us; not writing into it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _owned_dir(root: Path, prefix: str) -> tuple[Path, int]:
    """A new boot directory and the fd of the lock that says it is in use."""
    root.parent.mkdir(parents=True, exist_ok=True)
    private_dir(root)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    fd = os.open(work / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return work, fd


@dataclass
class LocalBooter:
    """Boots targets on this host; `store`/`namespace` say where the images are pulled from."""

    store: Store
    namespace: str
    host_name: str
    work_dir: Path
    host: qemu.Host
    firmware: qemu.Firmware
    accel: qemu.Accel
    memory_mib: int
    backoff: Backoff
    max_virtual_size: int
    max_disk_bytes: int  # max_image_bytes
    account: qemu.Account | None = None  # whom qemu runs as (`qemu.qemu_account`)

    def firmware_for(self, target: Target) -> qemu.Firmware:
        return "secure" if target.secure_boot else self.firmware

    def describe(self, target: Target) -> str:
        """What a boot of `target` would be (the dry run's words)."""
        accel = "kvm" if self.host.accelerated(target.goarch, self.accel) else "tcg"
        return f"{self.firmware_for(target)}, {accel}"

    def cannot_boot(self, target: Target) -> str | None:
        return self.host.cannot_boot(target.goarch)

    def repository(self, target: Target) -> str:
        return f"{self.namespace}/{target.name}" if self.namespace else target.name

    @contextlib.asynccontextmanager
    async def boot(self, target: Target, user_data: str) -> AsyncIterator[Guest]:
        root = self.work_dir / "verify"
        work, lock = _owned_dir(root, f"{target.name}-{target.version}-")
        try:
            async with self._vm(target, user_data, work) as vm:
                try:
                    yield vm
                except CheckFailedError as e:
                    try:
                        kept = f"serial log: {self._keep(vm, target)}"
                    except (LocalError, OSError) as why:
                        kept = f"serial log not kept: {why}"
                    raise CheckFailedError(e.kind, f"{e} ({kept})") from None
        finally:
            try:
                await to_the_end(asyncio.to_thread(shutil.rmtree, work, True))
            finally:
                os.close(lock)

    @contextlib.asynccontextmanager
    async def _vm(
        self, target: Target, user_data: str, work: Path
    ) -> AsyncIterator[qemu.VirtualMachine]:
        disk = work / "disk.img"
        where = f"{self.host_name}/{self.repository(target)}@{target.digest}"
        await pull_disk(
            self.store,
            self.repository(target),
            target.digest,
            target.goarch,
            disk,
            where=where,
            backoff=self.backoff,
            max_bytes=self.max_disk_bytes,
        )
        with disk.open("rb") as f:
            head = f.read(HEAD)
        if (why := refusal(head, self.max_virtual_size)) is not None:
            raise PullError(f"{where}: {why}")
        seed = await write_seed(work, user_data, meta_data(target.name))
        firmware = self.firmware_for(target)
        log.info("booting", entry=target.key, arch=target.arch, firmware=firmware)
        async with qemu.boot(
            goarch=target.goarch,
            disk=disk,
            seed=seed,
            work=work,
            firmware=firmware,
            kvm=self.host.accelerated(target.goarch, self.accel),
            memory_mib=self.memory_mib,
            account=self.account,
        ) as vm:
            yield vm

    def _keep(self, vm: qemu.VirtualMachine, target: Target) -> Path:
        kept = self.work_dir / "serial-logs"
        private_dir(kept)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        # mkstemp: 0600, O_EXCL (a name taken, or a link planted, is never written through)
        fd, name = tempfile.mkstemp(
            prefix=f"{target.name}-{target.version}-{target.arch}-{stamp}-", suffix=".log", dir=kept
        )
        with (
            open(fd, "wb") as out,
            contextlib.suppress(FileNotFoundError),  # qemu never started: an empty log
            vm.serial_log.open("rb") as log_file,
        ):
            shutil.copyfileobj(log_file, out)
        logs = sorted(kept.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in logs[KEPT_LOGS:]:  # a failing image retried for weeks must not fill the disk
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return Path(name)
