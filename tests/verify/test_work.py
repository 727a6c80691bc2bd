"""What a verify run leaves on disk and what one entry's failure does to the run: the boot
directories a killed run left are removed while a live run's are kept (its lock is held by a
real second process), the seed is an ISO labelled `cidata`, and an unexpected error (a full
disk) fails its entry in one line while the others are verified."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from containerdisks.commands.verify import verify_all
from containerdisks.engine.results import Result
from containerdisks.verify.local import (
    _LOCK,
    LocalError,
    _owned_dir,
    private_dir,
    remove_stale_work,
)
from containerdisks.verify.seed import meta_data, write_seed
from containerdisks.verify.ssh import SshCheck
from containerdisks.verify.target import Target


def _held_by_another_process(lock: Path) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(["flock", "--exclusive", "--no-fork", str(lock), "sleep", "60"])
    deadline = time.monotonic() + 10
    while True:  # until the lock is really held
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        assert time.monotonic() < deadline, "flock never took the lock"
        time.sleep(0.02)


def test_only_boot_directories_nobody_holds_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "verify"
    live, live_fd = _owned_dir(root, "live-")
    os.close(live_fd)  # our lock goes; another process takes it, as a concurrent run would
    _, killed_fd = _owned_dir(root, "killed-")
    os.close(killed_fd)  # its owner died: the kernel dropped the lock
    unlocked_old = root / "old-no-lock"
    unlocked_old.mkdir()
    os.utime(unlocked_old, (time.time() - 3600, time.time() - 3600))
    unlocked_new = root / "new-no-lock"  # created a moment ago: its owner is about to lock it
    unlocked_new.mkdir()
    holder = _held_by_another_process(live / _LOCK)
    try:
        remove_stale_work(tmp_path)
        assert ["live-", "new-no-lock"] == sorted(
            p.name[:5] if p.name.startswith("live-") else p.name for p in root.iterdir()
        )
        holder.send_signal(signal.SIGKILL)  # the other run dies: its directory is stale now
        holder.wait(timeout=10)
        remove_stale_work(tmp_path)
        assert ["new-no-lock"] == [p.name for p in root.iterdir()]
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        holder.wait(timeout=10)


async def test_the_seed_is_an_iso_labelled_cidata(tmp_path: Path) -> None:
    seed = await write_seed(tmp_path, "#cloud-config\n", meta_data("tiny"))
    # ISO 9660: the primary volume descriptor is sector 16; its volume id is bytes 40-72.
    with seed.open("rb") as f:
        f.seek(16 * 2048)
        descriptor = f.read(2048)
    assert (b"\x01CD001", b"cidata") == (descriptor[:6], descriptor[40:72].rstrip(b" "))
    listing = subprocess.run(
        ["isoinfo", "-R", "-f", "-i", str(seed)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert ["/meta-data", "/user-data"] == sorted(listing)


class _BrokenBooter:
    """Boots nothing: each target's boot raises what a real host can (the flow is under test)."""

    errors: ClassVar[dict[str, Exception]] = {
        "full:1": OSError(28, "No space left on device", "/work/verify/full-1-x/disk.img"),
        "hung:1": TimeoutError(),
    }

    def describe(self, target: Target) -> str:
        return "broken"

    def cannot_boot(self, target: Target) -> str | None:
        return None

    @contextlib.asynccontextmanager
    async def boot(self, target: Target, user_data: str) -> AsyncIterator[object]:
        raise self.errors[target.key]
        yield  # pragma: no cover


def _target(key: str) -> Target:
    name, _, version = key.partition(":")
    result = Result([f"{name}:{version}"], "", "push", "sha256:" + "a" * 64)
    return Target(key, name, version, "x86_64", result, result.digest, "root", False, False)


async def test_an_unexpected_error_fails_its_entry_in_one_line_and_not_the_run() -> None:
    verdicts = await verify_all(
        [_target("full:1"), _target("hung:1")],
        _BrokenBooter(),  # type: ignore[arg-type]
        SshCheck(timeout=1),
        workers=2,
        dry_run=False,
    )
    assert [
        ("full:1", "failed", "No space left on device: '/work/verify/full-1-x/disk.img'"),
        ("hung:1", "failed", "TimeoutError"),
    ] == [(v.key, v.status, v.detail) for v in verdicts]
    records = [v.result for v in verdicts]
    assert all(r is not None and r.stage == "verify" and "\n" not in r.error for r in records)
    assert records[0] is not None
    assert records[0].error == "full:1: No space left on device: '/work/verify/full-1-x/disk.img'"


def test_a_lock_is_released_with_its_directory(tmp_path: Path) -> None:
    boot_dirs = 3
    made = [_owned_dir(tmp_path / "verify", f"b{i}-") for i in range(boot_dirs)]
    remove_stale_work(tmp_path)  # all held by this process: all kept
    assert boot_dirs == len(list((tmp_path / "verify").iterdir()))
    for _, fd in made:
        os.close(fd)
    remove_stale_work(tmp_path)
    assert [] == list((tmp_path / "verify").iterdir())


def test_the_kept_logs_directory_is_ours_alone_or_refused(tmp_path: Path) -> None:
    made = tmp_path / "made"
    private_dir(made)
    assert 0o700 == stat.S_IMODE(made.stat().st_mode)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    private_dir(loose)  # ours: fixed, not refused (an older version made it so)
    assert 0o700 == stat.S_IMODE(loose.stat().st_mode)
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(LocalError) as e:
        private_dir(link)
    assert f"{link} is not a directory (a link or a file); not writing into it" == str(e.value)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(LocalError, match=f"{theirs} belongs to uid 65534, not to us"):
            private_dir(theirs)
        assert 0o755 == stat.S_IMODE(theirs.stat().st_mode)  # left as it was
