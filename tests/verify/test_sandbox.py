"""qemu as `images verify --local` starts it, on a hostile image: the guest cannot read a host
file the image names, nor reach the host's loopback services, and qemu runs as `nobody`.

The header check before boot (another layer) is bypassed here on purpose: these tests call
`qemu.boot` / `qemu.command_line` directly on crafted images. The guest is the tiny image's
"dump" variant: its `/init` prints what its disk holds at 63 MiB (unallocated in the image,
so a backing file shows through there) and what a loopback HTTP server answered, then powers
off. The same image under a plain `qemu -drive file=...` shows the canary and the server's
token: that is what these tests would see if our command line let them through.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from containerdisks.verify import qemu
from containerdisks.verify.seed import meta_data, write_seed
from tests.support.tinycloud import DumpReport, build_dump_image, dump_report
from tests.support.upstream_server import UpstreamServer, put

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="the drop to nobody needs root"),
]

AT_MIB = 63
PROBE = "http://probe.example/token"


@pytest.fixture(scope="module")
def dump_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dump_image(tmp_path_factory.mktemp("dump"), AT_MIB)


def _canary(path: Path, token: bytes) -> None:
    """A 64 MiB host file with `token` at AT_MIB MiB, readable by root only."""
    with path.open("wb") as f:
        f.truncate(64 << 20)
        f.seek(AT_MIB << 20)
        f.write(token)
    path.chmod(0o600)


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


async def _report(vm: qemu.VirtualMachine) -> DumpReport:
    deadline = time.monotonic() + 200  # a TCG boot: 10-20 s idle, much more on a loaded host
    while (report := dump_report(vm.serial_text())) is None:
        why = vm.failure()
        assert why is None, f"{why}; serial: {vm.serial_text()[-1500:]}"
        assert time.monotonic() < deadline, f"no report; serial: {vm.serial_text()[-1500:]}"
        await asyncio.sleep(0.25)
    return report


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def _sandboxed_qemu(pid: int) -> dict[str, str]:
    """/proc/<pid>/status once setpriv has become qemu (exec keeps the pid) and qemu has set
    up its sandbox (early in its start, seconds before the guest's first line)."""
    deadline = time.monotonic() + 30
    while True:
        status = _status(pid)
        if status["Name"].startswith("qemu-system") and status["Seccomp"] != "0":
            return status
        assert time.monotonic() < deadline, f"never a sandboxed qemu: {status}"
        await asyncio.sleep(0.01)


async def test_a_backing_file_and_the_host_stay_out_of_reach(
    tmp_path: Path, dump_image: Path
) -> None:
    token = f"CANARY{secrets.token_hex(8)}"
    canary = tmp_path / "canary.raw"
    _canary(canary, token.encode())
    crafted = tmp_path / "crafted.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", dump_image, crafted], check=True)
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-b", canary, "-F", "raw", crafted], check=True, timeout=60
    )
    # The guest's read at AT_MIB falls where the image has no data: the backing file shows there.
    extents = json.loads(
        subprocess.run(
            ["qemu-img", "map", "--output=json", "-f", "qcow2", crafted],
            check=True, capture_output=True, text=True,
        ).stdout
    )  # fmt: skip
    at = AT_MIB << 20
    assert next(e for e in extents if e["start"] <= at < e["start"] + e["length"])["depth"] == 1
    server_token = f"HOST{secrets.token_hex(8)}"
    served = tmp_path / "served"
    put(served, PROBE, server_token)
    async with UpstreamServer(served) as server:
        url = f"http://10.0.2.2:{server.port}/probe.example/token"  # the host, seen from slirp
        user_data = f"#cloud-config\n#tinycloud-probe: {url}\n"
        seed = await write_seed(_private(tmp_path / "seed"), user_data, meta_data("dump"))

        # What a plain qemu does with it: the canary and the server's token reach the guest.
        plain_serial = tmp_path / "plain.log"
        plain = [
            "qemu-system-x86_64", "-machine", "q35", "-cpu", "max", "-accel", "tcg", "-m", "256",
            "-nographic", "-no-reboot", "-monitor", "none", "-serial", f"file:{plain_serial}",
            "-drive", f"file={crafted},format=qcow2,if=virtio,snapshot=on",
            "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
        ]  # fmt: skip
        async with qemu.VirtualMachine(plain, plain_serial, 0) as vm:
            seen = await _report(vm)
        assert (1 << 20, token, server_token) == (seen.read, seen.got, seen.probe), seen
        assert 1 == server.count(PROBE)

        # Ours, as root would run it: zeros where the backing file was, no way to the host.
        work = _private(tmp_path / "work")
        async with qemu.boot(
            goarch="amd64", disk=crafted, seed=seed, work=work, firmware="bios", kvm=False,
            memory_mib=256, account=qemu.qemu_account("nobody"),
        ) as vm:  # fmt: skip
            assert vm.pid is not None
            status = await _sandboxed_qemu(vm.pid)
            seen = await _report(vm)
        assert seen.disk.startswith("/dev/vd"), seen
        assert (1 << 20, "", "") == (seen.read, seen.got, seen.probe), seen
        assert 1 == server.count(PROBE)  # the guest's request never left qemu
    assert ["65534"] * 4 == status["Uid"].split()
    assert ["65534"] * 4 == status["Gid"].split()
    assert "" == status["Groups"]
    assert ("1", "2") == (status["NoNewPrivs"], status["Seccomp"])  # 2: a seccomp filter
    assert token not in (work / "serial.log").read_text(errors="replace")


async def test_an_external_data_file_is_never_opened(tmp_path: Path) -> None:
    token = f"CANARY{secrets.token_hex(8)}"
    canary = tmp_path / "canary.raw"  # root's, 0600, in root's 0700 test directory
    _canary(canary, token.encode())
    crafted = tmp_path / "crafted.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2",
         "-o", f"data_file={canary},data_file_raw=on", crafted, "64M"],
        check=True,
    )  # fmt: skip
    seed = await write_seed(_private(tmp_path / "seed"), "#cloud-config\n", meta_data("dump"))
    work = _private(tmp_path / "work")
    account = qemu.qemu_account("nobody")
    # boot() refuses it from the header, before qemu exists.
    with pytest.raises(qemu.QemuError) as e:
        async with qemu.boot(
            goarch="amd64", disk=crafted, seed=seed, work=work, firmware="bios", kvm=False,
            memory_mib=256, account=account,
        ):  # fmt: skip
            pytest.fail("booted")
    assert "crafted.qcow2: the qcow2 header names an external data file; not booted" == str(e.value)
    assert [] == sorted(p.name for p in work.iterdir())  # nothing made, nothing started
    # Under that check: our command line for it anyway, run as nobody. qemu, told nothing
    # about a data file, opens the name in the header itself, and nobody may not.
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", work / "overlay.qcow2", "64M"], check=True
    )
    files = {
        name: os.open(path, flags | os.O_CLOEXEC, 0o600)
        for name, path, flags in [
            ("disk", crafted, os.O_RDONLY),
            ("overlay", work / "overlay.qcow2", os.O_RDWR),
            ("seed", seed, os.O_RDONLY),
            ("serial", work / "serial.log", os.O_WRONLY | os.O_CREAT),
        ]
    }
    try:
        handed = qemu.Handed(**files)
        command = qemu.launcher(account) + qemu.command_line(
            goarch="amd64", name=str(work), files=handed, disk_format="qcow2", ssh_port=0,
            firmware="bios", kvm=False, memory_mib=256,
        )  # fmt: skip
        async with qemu.VirtualMachine(command, work / "serial.log", 0, handed.fds()) as vm:
            deadline = time.monotonic() + 60
            while (why := vm.failure()) is None:
                assert time.monotonic() < deadline, vm.serial_text()[-1500:]
                await asyncio.sleep(0.1)
    finally:
        for fd in files.values():
            os.close(fd)
    assert why.startswith("qemu exited with status 1: "), why
    assert f"Could not open '{canary}': Permission denied" in why, why
    assert token not in (work / "serial.log").read_text(errors="replace")
