"""The guest's first-boot input: a fresh ed25519 key pair, medius's cloud-init user data, and
the NoCloud seed (an ISO9660 volume labelled `cidata`) that carries it to a local VM.

One key per boot, generated in memory and never written to disk: the private half only ever
reaches asyncssh, the public half only the user data. The user data is medius's template
(`pkg/docs/data/cloudinit.tpl`): top-level `ssh_authorized_keys`, which cloud-init gives to the
image's default user, so the same text works under KubeVirt's `cloudInitNoCloud` and locally.
The ISO is written by `genisoimage` or `xorriso` (system packages; whichever is installed):
both are what cloud-localds uses, and ISO9660 is what every cloud-init reads.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from containerdisks.verify.sshlib import asyncssh

__all__ = ["SeedError", "SshLogin", "make_credentials", "meta_data", "user_data", "write_seed"]

SEED_LABEL = "cidata"
_TOOL_TIMEOUT = 60.0


class SeedError(Exception):
    """The seed could not be written; one line naming the tool and what it said."""


@dataclass(frozen=True)
class SshLogin:
    """A login: the user, the private key (in memory), its public half (authorized_keys form)."""

    user: str
    key: asyncssh.SSHKey
    public: str

    def __repr__(self) -> str:  # the private key never reaches a log or an error
        return f"SshLogin(user={self.user!r}, public={self.public!r})"


def make_credentials(user: str) -> SshLogin:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="containerdisks-verify")
    public = key.export_public_key("openssh").decode("ascii").strip()
    return SshLogin(user, key, public)


def user_data(credentials: SshLogin) -> str:
    """medius's cloud-config: the default user gets the key."""
    return (
        "#cloud-config\n"
        f"# The default username is: {credentials.user}\n"
        "ssh_authorized_keys:\n"
        f"  - {credentials.public}\n"
    )


def meta_data(hostname: str) -> str:
    return f"instance-id: verify-{secrets.token_hex(6)}\nlocal-hostname: {hostname}\n"


def _iso_command(output: Path, files: list[Path]) -> list[str]:
    options = ["-output", str(output), "-volid", SEED_LABEL, "-joliet", "-rock", "-quiet"]
    if tool := shutil.which("genisoimage"):
        return [tool, *options, *map(str, files)]
    if tool := shutil.which("xorriso"):
        return [tool, "-as", "mkisofs", *options, *map(str, files)]
    raise SeedError("no ISO writer found: install genisoimage or xorriso")


async def write_seed(directory: Path, user: str, meta: str) -> Path:
    """Write `user-data`, `meta-data` and `seed.iso` (label cidata) into `directory`."""
    user_path, meta_path = directory / "user-data", directory / "meta-data"
    user_path.write_text(user, encoding="utf-8")
    meta_path.write_text(meta, encoding="utf-8")
    output = directory / "seed.iso"
    command = _iso_command(output, [user_path, meta_path])
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), _TOOL_TIMEOUT)
    except TimeoutError:
        raise SeedError(
            f"{Path(command[0]).name} did not finish within {_TOOL_TIMEOUT:.0f} s"
        ) from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()
        raise SeedError(
            f"{Path(command[0]).name} failed ({process.returncode}): {said[-1] if said else ''}"
        )
    return output
