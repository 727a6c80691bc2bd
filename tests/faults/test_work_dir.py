"""The work dir is ours alone, as real processes see it (issue 19, item 5).

- A work dir owned by another user (`nobody`), or writable by group or others, or a symbolic link
  of another user's, is refused by every command that writes into it: one line, exit 2, before
  any network traffic. A missing one is created 0700.
- A spool file is never opened through a name someone planted (a symbolic link at its name), and
  is read back through the descriptor it was written with: a file swapped in under its name
  after the checksum matched (while the proxy holds the upload) is not what gets published.
- A results file that cannot be written: exit 1, one line, no temporary file left.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import pwd
import resource
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from containerdisks.engine.publish import Publisher, PublishError
from tests.support.cli import clean_env, command, push, static_catalog
from tests.support.disks import make_qcow2
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.loopback import free_port
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer, put

URL = "https://example.org/tiny/tiny-x86_64.qcow2.gz"
NOBODY = pwd.getpwnam("nobody")


def cli(*args: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=cwd,
        **kwargs,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert 1 == len(lines), stderr
    return lines[0]


# -- who owns the work dir --------------------------------------------------------------------


def by_nobody(path: Path, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    path.chmod(mode)
    return path


def test_a_work_dir_owned_by_another_user_is_refused_by_push(
    tmp_path: Path, registry: Registry, fedora: Any
) -> None:
    srv, _ = fedora
    by_nobody(tmp_path / "work")
    before = len(srv.requests)

    result = push(srv, f"{registry.host}/cd", cwd=tmp_path)

    assert 2 == result.returncode, result.stderr
    line = one_line(result.stderr)
    assert line == (
        f"containerdisks: work dir {tmp_path / 'work'} is owned by uid {NOBODY.pw_uid} (nobody) "
        "(mode 0755), not by uid 0 (root) who runs containerdisks; use a directory of your own"
    )
    assert before == len(srv.requests)  # refused before discovery
    assert [] == list((tmp_path / "work").iterdir())
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_work_dir_writable_by_group_or_others_is_refused(
    tmp_path: Path, registry: Registry, fedora: Any, mode: int
) -> None:
    srv, _ = fedora
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(mode)

    result = push(srv, f"{registry.host}/cd", cwd=tmp_path)

    assert 2 == result.returncode, result.stderr
    assert one_line(result.stderr) == (
        f"containerdisks: work dir {work} is writable by group or others (mode {mode:04o}); "
        "make it 0700 or use a directory of your own"
    )
    assert mode == work.stat().st_mode & 0o7777  # left as it was


def test_another_users_symlink_as_work_dir_is_refused(
    tmp_path: Path, registry: Registry, fedora: Any
) -> None:
    srv, _ = fedora
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.symlink_to(mine)
    os.lchown(work, NOBODY.pw_uid, NOBODY.pw_gid)  # its owner could repoint it at any time

    result = push(srv, f"{registry.host}/cd", cwd=tmp_path)

    assert 2 == result.returncode, result.stderr
    assert f"work dir {work} is a symbolic link owned by uid {NOBODY.pw_uid}" in one_line(
        result.stderr
    )


def test_a_missing_work_dir_is_created_private(
    tmp_path: Path, registry: Registry, fedora: Any
) -> None:
    srv, _ = fedora
    work = tmp_path / "deep" / "work"
    old = os.umask(0)  # a permissive umask does not open it up
    try:
        result = push(srv, f"{registry.host}/cd", "--work-dir", str(work), cwd=tmp_path)
    finally:
        os.umask(old)
    assert 0 == result.returncode, result.stderr
    assert 0o700 == work.stat().st_mode & 0o7777
    assert [] == list(work.iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--once", "--dry-run=false"],
        ["serve", "--dry-run=false", "--listen", f"127.0.0.1:{free_port()}"],
        ["images", "verify", "--local", "--dry-run=false", "--results-file", "r.json"],
    ],
    ids=["serve-once", "serve", "verify-local"],
)
def test_every_command_writing_there_refuses_it(tmp_path: Path, args: list[str]) -> None:
    work = by_nobody(tmp_path / "work")
    result = cli(*args, "--work-dir", str(work), cwd=tmp_path)
    assert 2 == result.returncode, result.stderr
    assert f"work dir {work} is owned by uid {NOBODY.pw_uid}" in one_line(result.stderr)


def test_a_dry_run_does_not_look_at_the_work_dir(tmp_path: Path, fedora: Any) -> None:
    srv, _ = fedora
    by_nobody(tmp_path / "work")
    result = cli(
        "images", "push", "--focus", "fedora:40", "--source-registry", f"oci:{tmp_path / 'out'}",
        "--work-dir", str(tmp_path / "work"), *srv.mirror_args(), cwd=tmp_path,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr


# -- spool files ------------------------------------------------------------------------------


def tiny_config(tmp_path: Path, root: Path, disk: bytes) -> Path:
    packed = gzip.compress(disk, mtime=0)
    put(root, URL, packed)
    return static_catalog(tmp_path / "catalog.yaml", URL, hashlib.sha256(packed).hexdigest())


def published_disk(registry: Registry, tmp_path: Path, repo: str, tag: str) -> bytes:
    """The disk in the layer of `repo:tag`, as skopeo copies it out."""
    dest = tmp_path / "pulled"
    registry.pull(repo, tag, f"oci:{dest}:x", all_images=False, preserve_digests=False)
    index = json.loads((dest / "index.json").read_text())

    def blob(digest: str) -> bytes:
        return (dest / "blobs/sha256" / digest.split(":")[1]).read_bytes()

    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    layer = gzip.decompress(blob(manifest["layers"][0]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        f = t.extractfile("disk/disk.img")
        assert f is not None
        return f.read()


def test_a_spool_swapped_by_name_after_the_checksum_is_not_published(
    tmp_path: Path, registry: Registry
) -> None:
    root = tmp_path / "up"
    disk = make_qcow2(tmp_path / "tiny.qcow2", "tiny")
    config = tiny_config(tmp_path, root, disk)
    forged = b"FORGED!!" * (len(disk) // 8) + b"F" * (len(disk) % 8)  # same size, other bytes
    work = tmp_path / "work"
    with UpstreamServer(root) as srv, FaultProxy(registry.url) as proxy:
        # the layer upload opens after the spool is complete and its checksum matched
        proxy.add(Rule("POST", r"^/v2/cd/tiny/blobs/uploads/$", "hold", times=1))
        argv = command(srv, f"{proxy.host}/cd", "--config", str(config), cwd=tmp_path)
        argv[argv.index("fedora:*")] = "tiny:1"
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env()
        )
        try:
            assert proxy.wait_held(60), "the upload never started"
            (spool,) = work.glob("*.spool")
            assert 0o600 == spool.stat().st_mode & 0o777
            planted = work / "planted"
            planted.write_bytes(forged)
            os.replace(planted, spool)  # the trial's attack: same name, other bytes
            proxy.release()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert 0 == proc.returncode, err
    assert disk == published_disk(registry, tmp_path, "cd/tiny", "1")
    assert [] == list(work.iterdir())  # the swapped-in file is removed with the spool's name


def test_a_symlink_planted_at_the_spool_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool's name is random; the test makes it known in advance (uuid4 patched) and plants
    a link there to a file the link's target must not get: the open fails, the file is intact."""
    fixed = uuid.UUID(int=1)
    monkeypatch.setattr("containerdisks.engine.publish.uuid.uuid4", lambda: fixed)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (work / f"tiny-x86_64-{fixed.hex}.spool").symlink_to(victim)
    publisher = Publisher(
        upstream=None,  # type: ignore[arg-type]  # _spool reads only its source
        source=None,  # type: ignore[arg-type]
        target=None,  # type: ignore[arg-type]
        family="oci",
        compression="gzip",
        work_dir=work,
        max_spool_bytes=1 << 20,
        max_virtual_size=1 << 40,
        max_image_bytes=1 << 20,
    )
    entry: Any = type("E", (), {"name": "tiny"})()
    artifact: Any = type("A", (), {"arch": "x86_64", "url": URL})()

    async def source() -> Any:
        yield b"attacker wants this written through the link"

    with pytest.raises(PublishError, match=r"spool file .*\.spool: File exists"):
        asyncio.run(publisher._spool(entry, artifact, source()))
    assert b"keep me" == victim.read_bytes()


# -- the results file -------------------------------------------------------------------------


def test_a_results_file_that_cannot_be_written_fails_push_and_leaves_no_temp_file(
    tmp_path: Path, registry: Registry, fedora: Any
) -> None:
    srv, _ = fedora
    results = tmp_path / "results.json"
    results.mkdir()  # a directory where the file goes: the rename fails

    result = push(srv, f"{registry.host}/cd", "--focus", "fedora:40", "--no-fail", cwd=tmp_path)

    assert 1 == result.returncode, result.stderr
    (event,) = [
        e
        for e in map(json.loads, result.stderr.splitlines())
        if e["event"] == "results_not_written"
    ]
    assert event["error"].startswith(f"results file {results}: cannot write: ")
    assert "\n" not in event["error"]
    assert "Traceback" not in result.stderr
    assert [] == [p.name for p in tmp_path.glob(".results.json.*")]
    assert "40" in registry.list_tags("cd/fedora")  # the entries themselves were published


def _small_files_only() -> None:
    """Files of at most 64 bytes (Python's start-up probe of the temp dir writes 4): a longer
    write fails with EFBIG (Python ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


@pytest.mark.parametrize(
    ("args", "stage"),
    [
        (["images", "promote", "--source-registry", "oci:/nonexistent/staging",
          "--target-registry", "oci:/nonexistent/prod"], "push"),
        (["images", "verify", "--local", "--registry", "oci:/nonexistent/staging"], "promote"),
    ],
    ids=["promote", "verify-local"],
)  # fmt: skip
def test_a_results_file_that_cannot_be_written_fails_the_later_stages(
    tmp_path: Path, args: list[str], stage: str
) -> None:
    """Nothing to promote or verify (every entry is at a stage the command leaves alone), so the
    command's only file write is the results file, longer than the file-size limit."""
    results = tmp_path / "results.json"
    before = json.dumps({f"x{i}:1": {"Tags": [f"x{i}:1"], "Stage": stage} for i in range(9)})
    results.write_text(before)
    result = cli(
        *args, "--dry-run=false", "--log-format", "json", "--results-file", str(results),
        *(["--work-dir", str(tmp_path / "work")] if "verify" in args else []),
        cwd=tmp_path, preexec_fn=_small_files_only,
    )  # fmt: skip
    assert 1 == result.returncode, result.stderr
    (event,) = [
        e
        for e in map(json.loads, result.stderr.splitlines())
        if e["event"] == "results_not_written"
    ]
    assert event["error"].startswith(f"results file {results}: cannot write: File too large")
    assert before == results.read_text()  # the old file is intact
    assert [] == [p.name for p in tmp_path.glob(".results.json.*")]
