"""The work dir is ours alone: created 0700, refused when someone else could write into it.

Spool files, the daemon's results file and verify's boot directories live in the work dir, and
what is there is published or booted. So every command that writes into it checks it once, at
its start (`own_work_dir`), and so does every spool before it creates a file (the directory may
have been removed and made again meanwhile, e.g. by a tmp cleaner and another user).

Decisions:
- A missing work dir is created with mode 0700 (its parents as `mkdir -p` makes them).
- An existing one must be a directory owned by the user running the command (the effective
  uid) and writable by nobody else: no group or other write bit, whatever the sticky bit says.
  Anything else is a `WorkDirError` (a `ConfigError`: one line, exit 2) naming the path, the
  owner and the mode; nothing is changed on a directory we did not create.
- A symbolic link is followed only when it belongs to us or to root: its owner could otherwise
  point it elsewhere after the check.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from containerdisks.settings import ConfigError

__all__ = ["WorkDirError", "own_work_dir"]


class WorkDirError(ConfigError):
    """The work dir is not ours alone; the message is one line naming it."""


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def own_work_dir(path: Path) -> None:
    """Create `path` with mode 0700, or check that the existing directory is ours alone."""
    where = f"work dir {path}"
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as e:
        raise WorkDirError(f"{where}: cannot create it: {e.strerror or e}") from None
    else:
        os.chmod(path, 0o700)  # exactly 0700, whatever the umask
        return
    me = os.geteuid()
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (me, 0):
                raise WorkDirError(
                    f"{where} is a symbolic link owned by {_user(st.st_uid)}, not by "
                    f"{_user(me)} who runs containerdisks; use a directory of your own"
                )
            st = os.stat(path)
    except OSError as e:
        raise WorkDirError(f"{where}: {e.strerror or e}") from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise WorkDirError(f"{where} is not a directory")
    if st.st_uid != me:
        raise WorkDirError(
            f"{where} is owned by {_user(st.st_uid)} (mode {mode:04o}), not by {_user(me)} "
            "who runs containerdisks; use a directory of your own"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise WorkDirError(
            f"{where} is writable by group or others (mode {mode:04o}); "
            "make it 0700 or use a directory of your own"
        )
