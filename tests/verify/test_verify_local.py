"""`images verify --local` end to end: push a tiny image into the real registry, pull it by
digest, boot it under qemu with a fresh key in a NoCloud seed, and log in over SSH.

Every boot is real (TCG here: a few seconds each). After every test the conftest checks that
no qemu process and no boot directory is left.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import clean_env
from tests.support.cosign import keypair, put_sig, replace_sig_payload
from tests.support.tinycloud import qemu_processes
from tests.verify.conftest import Published, assert_every_vm_stopped

# Real boots under TCG: a few seconds each on an idle host, much more on a loaded one.
pytestmark = pytest.mark.timeout(300)


def _kept_log(err: str) -> Path:
    match = re.search(r"\(serial log: ([^)]+)\)", err)
    assert match, err
    return Path(match.group(1))


@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_push_then_verify_boots_the_pushed_digest(published: Published, firmware: str) -> None:
    pushed = published.push("tiny:1")["tiny:1"]
    done = published.verify("--dry-run=false", "--firmware", firmware)
    assert 0 == done.returncode, done.stderr
    assert re.search(r"tiny:1\s+x86_64\s+verified in \d+\.\d s", done.stdout), done.stdout
    after = published.read_results()["tiny:1"]
    assert {"Tags": pushed["Tags"], "Stage": "verify", "Digest": pushed["Digest"]} == after
    index = published.registry.inspect_raw("cd/tiny", "1")
    assert f"sha256:{hashlib.sha256(index).hexdigest()}" == after["Digest"]
    events = [json.loads(line) for line in done.stderr.splitlines()]
    booted = [e for e in events if e.get("event") == "booting"]
    assert [firmware] == [e["firmware"] for e in booted]
    assert any(e.get("event") == "disk_pulled" for e in events)
    # A second run finds nothing at stage push: nothing boots, the file stays as it is.
    again = published.verify("--dry-run=false")
    assert 0 == again.returncode, again.stderr
    assert "skipped: already at stage verify" in again.stdout
    assert after == published.read_results()["tiny:1"]


def test_secure_boot_boots_the_signed_chain_and_refuses_an_unsigned_loader(
    published: Published, secure_image: Path
) -> None:
    published.push("tiny-sb:1")
    published.push("tiny-unsigned-sb:1")
    done = published.verify("--dry-run=false")
    assert 1 == done.returncode, done.stderr
    assert re.search(r"tiny-sb:1\s+x86_64\s+verified", done.stdout), done.stdout
    results = published.read_results()
    assert "Err" not in results["tiny-sb:1"]
    err = results["tiny-unsigned-sb:1"]["Err"]
    assert err.startswith("tiny-unsigned-sb:1: did not boot: Secure Boot refused the boot loader")
    assert "Access Denied" in _kept_log(err).read_text(errors="replace")
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert {"secure"} == {e["firmware"] for e in events if e.get("event") == "booting"}


def test_an_image_that_ignores_the_seed_fails_on_the_refused_key(published: Published) -> None:
    published.push("tiny-ignores:1")
    done = published.verify("--dry-run=false")
    assert 1 == done.returncode, done.stderr
    err = published.read_results()["tiny-ignores:1"]["Err"]
    assert err.startswith(
        "tiny-ignores:1: SSH refused the key for user 'root' after 3 login attempts (serial log: "
    ), err
    assert "\n" not in err
    assert "CLOUDINIT-OK" in _kept_log(err).read_text(errors="replace")  # it did boot
    assert "Traceback" not in done.stderr


def test_a_garbage_disk_fails_fast_and_the_other_entry_still_passes(
    published: Published,
) -> None:
    published.push("tiny-garbage:1")
    published.push("tiny:1")
    kept_dir = published.work / "serial-logs"
    kept_dir.mkdir(parents=True)
    kept_dir.chmod(0o755)  # as an older version left it
    started = time.monotonic()
    done = published.verify("--dry-run=false", "--workers", "2")
    assert 1 == done.returncode, done.stderr
    assert time.monotonic() - started < 120  # not the 600 s timeout
    results = published.read_results()
    err = results["tiny-garbage:1"]["Err"]
    assert err.startswith("tiny-garbage:1: did not boot: the firmware found no bootable disk")
    kept = _kept_log(err)
    assert kept.parent == kept_dir
    # What a guest printed may be a secret it read: for our eyes only.
    assert (0o600, 0o700) == (
        stat.S_IMODE(kept.stat().st_mode),
        stat.S_IMODE(kept_dir.stat().st_mode),
    )
    assert "UEFI Interactive Shell" in kept.read_text(errors="replace")  # the copy is whole
    assert 0o700 == stat.S_IMODE((published.work / "verify").stat().st_mode)
    assert {"Stage": "verify"} == {
        "Stage": results["tiny:1"]["Stage"],
    }
    assert "Err" not in results["tiny:1"]
    assert re.search(r"tiny-garbage:1\s+x86_64\s+failed: did not boot", done.stdout)
    assert 0 == published.verify("--dry-run=false", "--no-fail").returncode  # nothing left


def test_a_guest_too_slow_for_the_timeout_fails_naming_it(published: Published) -> None:
    published.push("tiny:1")
    done = published.verify("--dry-run=false", "--timeout", "1", "--no-fail")
    assert 0 == done.returncode, done.stderr  # --no-fail
    err = published.read_results()["tiny:1"]["Err"]
    assert err.startswith("tiny:1: no SSH banner within 1 s (serial log: "), err


def test_dry_run_boots_nothing_and_writes_nothing(published: Published) -> None:
    published.push("tiny:1")
    published.push("tiny-unsigned-sb:1")  # a Secure Boot entry; the dry run boots nothing
    before = published.results.read_bytes()
    done = published.verify()
    assert 0 == done.returncode, done.stderr
    assert re.search(r"tiny:1\s+x86_64\s+would boot \(uefi, tcg\)", done.stdout), done.stdout
    assert re.search(r"tiny-unsigned-sb:1\s+x86_64\s+would boot \(secure, tcg\)", done.stdout)
    assert before == published.results.read_bytes()
    assert not published.work.exists()
    assert "booting" not in done.stderr


_LOADED = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('kubernetes_asyncio loaded:', "
    "'kubernetes_asyncio' in sys.modules, file=sys.stderr)); "
    "runpy.run_module('containerdisks', run_name='__main__')"
)


def test_verify_local_never_imports_the_kubernetes_client(published: Published) -> None:
    """`--local` boots with qemu: the Kubernetes client is not even imported. The cluster path,
    run the same way, does import it: the probe sees the module when it is there."""
    published.push("tiny:1")
    local = published.verify_command()  # a dry run that plans a boot
    cluster = [flag for flag in local if flag != "--local"]
    env = clean_env(HOME=str(published.root), KUBECONFIG="")  # no kubeconfig, not in a pod
    said = []
    for command in (local, cluster):
        done = subprocess.run(
            [sys.executable, "-c", _LOADED, *command[3:]],
            capture_output=True, text=True, timeout=60, env=env, cwd=published.root,
        )  # fmt: skip
        said.append((done.returncode, done.stderr.splitlines()[-1]))
    assert [
        (0, "kubernetes_asyncio loaded: False"),
        (2, "kubernetes_asyncio loaded: True"),
    ] == said


def test_arches_this_host_cannot_boot_are_skipped_not_passed(published: Published) -> None:
    published.push("tiny-multi:1")
    published.push("tiny:1")
    before = published.read_results()
    done = published.verify("--dry-run=false", "--target-architecture", "s390x")
    assert 0 == done.returncode, done.stderr
    assert re.search(
        r"tiny-multi:1\s+s390x\s+skipped: cannot boot here: no local emulator for s390x",
        done.stdout,
    ), done.stdout
    assert re.search(r"tiny:1\s+s390x\s+skipped: no s390x image", done.stdout)
    assert before == published.read_results()  # still at stage push: not verified


def test_a_medius_results_file_without_digest_gets_the_digest_it_booted(
    published: Published,
) -> None:
    pushed = published.push("tiny:1")["tiny:1"]
    published.results.write_text(json.dumps({"tiny:1": {"Tags": pushed["Tags"], "Stage": "push"}}))
    done = published.verify("--dry-run=false")
    assert 0 == done.returncode, done.stderr
    assert pushed["Digest"] == published.read_results()["tiny:1"]["Digest"]


def test_bad_inputs_are_one_line_errors(published: Published) -> None:
    missing = published.verify("--dry-run=false")
    assert 2 == missing.returncode
    assert [f"containerdisks: results file {published.results} does not exist "
            "(run `images push` first)"] == missing.stderr.splitlines()  # fmt: skip
    published.results.write_text(json.dumps({"gone:1": {"Tags": ["gone:1-1"], "Stage": "push"}}))
    unknown = published.verify("--dry-run=false")
    assert 1 == unknown.returncode
    assert "gone:1: not in the catalog" in published.read_results()["gone:1"]["Err"]
    cluster = published.verify_command("--dry-run=false")
    cluster.remove("--local")
    env = clean_env(HOME=str(published.root), KUBECONFIG="")  # no kubeconfig, not in a pod
    done = subprocess.run(cluster, capture_output=True, text=True, timeout=60, env=env)
    assert 2 == done.returncode
    kubeconfig = published.root / ".kube" / "config"  # the default, named as it was looked up
    assert [f"containerdisks: images verify: kubernetes config ({kubeconfig} or in-cluster "
            "config): Service host/port is not set."] == done.stderr.splitlines()  # fmt: skip


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_boot_stops_qemu_and_removes_the_work_files(
    published: Published, tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    published.push("tiny-ignores:1")
    before = published.results.read_bytes()
    with subprocess.Popen(
        published.verify_command("--dry-run=false"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        cwd=tmp_path,
    ) as proc:
        deadline = time.monotonic() + 60
        while not qemu_processes(str(tmp_path)):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert status == proc.returncode, err
    assert_every_vm_stopped(err.decode())
    assert [] == qemu_processes(str(tmp_path))
    assert [] == list((published.work / "verify").iterdir())
    assert before == published.results.read_bytes()  # a cancelled run records nothing


def test_an_entry_without_a_login_user_passes_when_its_vm_boots(published: Published) -> None:
    """medius boots cirros (no user in its catalog entry) without any check: the VM coming up
    is the verification. Here the booted guest is also watched for a while for a failure."""
    published.push("tiny-nouser:1")
    done = published.verify("--dry-run=false")
    assert 0 == done.returncode, done.stderr
    assert re.search(r"tiny-nouser:1\s+x86_64\s+verified", done.stdout), done.stdout
    record = published.read_results()["tiny-nouser:1"]
    assert ("verify", None) == (record["Stage"], record.get("Err"))
    assert "booted (no login user: no SSH check)" in done.stdout


def test_an_entry_an_earlier_stage_failed_fails_verify_as_in_medius(published: Published) -> None:
    published.push("tiny:1")
    results = published.read_results()
    failed = {"Stage": "push", "Err": "tiny-ignores:1: upstream: HTTP 404"}
    published.results.write_text(json.dumps({**results, "tiny-ignores:1": failed}))
    done = published.verify()  # a dry run too: the file says the entry failed
    assert 1 == done.returncode, done.stderr
    assert re.search(
        r"tiny-ignores:1\s+x86_64\s+failed: failed in stage push: upstream: HTTP 404", done.stdout
    ), done.stdout
    assert re.search(r"tiny:1\s+x86_64\s+would boot", done.stdout)
    said = [json.loads(line) for line in done.stderr.splitlines()]
    assert ["tiny-ignores:1 (push)"] == [
        e["entries"] for e in said if e["event"] == "failed_in_earlier_stage"
    ]
    again = published.verify("--no-fail")
    assert 0 == again.returncode, again.stderr
    assert failed == published.read_results()["tiny-ignores:1"]


def test_verify_key_refuses_before_booting_and_boots_what_checks(
    published: Published, tmp_path: Path
) -> None:
    """`--verify-key`: the wrong key, an unsigned image and a `.sig` whose payload a registry
    changed are each refused in one line naming the key, and nothing boots (no qemu started);
    the right key passes the check and the image boots."""
    key = keypair(tmp_path)
    other = keypair(tmp_path, "other").with_suffix(".pub")
    pushed = published.push("tiny:1", "--sign-key", str(key))
    published.push("tiny-ignores:1")  # unsigned
    pushed_results = published.results.read_text()

    def refused(pub: Path, entry: str, why: str) -> None:
        published.results.write_text(pushed_results)  # both entries at stage push again
        done = published.verify("--dry-run=false", "--verify-key", str(pub), "--focus", entry)
        assert 1 == done.returncode, done.stderr
        [row] = [line for line in done.stdout.splitlines() if line.startswith(entry)]
        assert f"failed: not signed with public key {pub}: " in row, row
        assert why in row, row
        err = published.read_results()[entry]["Err"]
        assert err.startswith(f"{entry}: not signed with public key {pub}: ")
        assert "\n" not in err
        events = {json.loads(e).get("event") for e in done.stderr.splitlines() if e[:1] == "{"}
        assert not events & {"disk_pulled", "booting", "vm_started"}, events
        assert [] == qemu_processes(str(published.root))

    refused(other, "tiny:1", "does not verify with public key")
    refused(other, "tiny-ignores:1", ".sig: not found (unsigned)")
    digest = pushed["tiny:1"]["Digest"]
    host = published.registry.host
    original, _ = replace_sig_payload(host, "cd/tiny", digest, lambda b: b.replace(b"1", b"2"))
    refused(key.with_suffix(".pub"), "tiny:1", f"signature of {digest}: does not verify")

    # The right key, the `.sig` as push wrote it.
    put_sig(host, "cd/tiny", digest, original)
    published.results.write_text(pushed_results)
    done = published.verify("--dry-run=false", "--verify-key", str(key.with_suffix(".pub")),
                            "--focus", "tiny:1")  # fmt: skip
    assert 0 == done.returncode, done.stderr
    assert re.search(r"tiny:1\s+x86_64\s+verified in \d+\.\d s", done.stdout), done.stdout
    assert any(json.loads(e).get("event") == "vm_started" for e in done.stderr.splitlines()
               if e[:1] == "{")  # fmt: skip
