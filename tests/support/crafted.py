"""Hostile disk images: real qcow2 files (`qemu-img`) that name a host file, the canary.

`backed(path, canary)` has the canary as its raw backing file, `data_file(path, canary)` as its
external data file; both (re)write the canary with `SECRET` afterwards (qemu-img creating a data
file truncates it), so that a guest able to read it would find the secret. Made per test in
tmp_path; nothing is committed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["SECRET", "backed", "data_file"]

SECRET = "canary: host secret that no guest may read\n"


def _create(path: Path, *options: str) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), "8M"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path.read_bytes()


def backed(path: Path, canary: Path) -> bytes:
    """A qcow2 whose backing file is `canary` (raw); its bytes."""
    canary.write_text(SECRET)
    return _create(path, "-b", str(canary), "-F", "raw")


def data_file(path: Path, canary: Path) -> bytes:
    """A qcow2 whose external data file is `canary`; its bytes."""
    data = _create(path, "-o", f"data_file={canary}")
    canary.write_text(SECRET)
    return data
