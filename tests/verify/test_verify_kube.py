"""`images verify` in KubeVirt against the FAKE API server of tests/support/fake_kube.py, whose
VMs are real qemu guests: the command runs as a real process, pushes come from the real
`images push`, and the SSH check goes through the fake's port-forward websocket into the guest.
In every case the fake must show each created VM deleted exactly once and nothing left.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import clean_env
from tests.support.cosign import keypair
from tests.support.fake_kube import FakeKube, Scenario
from tests.support.tinycloud import Images
from tests.verify.conftest import Published

FAST = {
    "CONTAINERDISKS_VERIFY_POLL_INTERVAL": "0.1",
    "CONTAINERDISKS_VERIFY_RETRY_INTERVAL": "0.3",
    # every port-forward try counts, also while the TCG guest still boots: 200 x 0.3 s at least
    "CONTAINERDISKS_VERIFY_SSH_ATTEMPTS": "200",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


@contextlib.contextmanager
def _fake_kube(work: Path, images: Images, **kw: Any) -> Iterator[FakeKube]:
    with FakeKube(work, disks={"tiny": images.good}, **kw) as f:
        yield f
    assert [] == f.live
    assert dict.fromkeys(f.created, 1) == f.deletes


@pytest.fixture
def fake(tmp_path: Path, tiny_images: Images) -> Iterator[FakeKube]:
    with _fake_kube(tmp_path / "fake-kube", tiny_images) as f:
        yield f


@pytest.fixture
def tls_fake(tmp_path: Path, tiny_images: Images) -> Iterator[FakeKube]:
    """HTTPS only, as real clusters; the token is not the default one."""
    token = f"sa-token-{secrets.token_hex(8)}"
    with _fake_kube(tmp_path / "fake-kube", tiny_images, tls=True, token=token) as f:
        yield f


def _command(
    p: Published,
    fake: FakeKube,
    *flags: str,
    config: Path | None = None,
    token: str | None = None,
    ca: bool = True,
) -> list[str]:
    kubeconfig = fake.kubeconfig(p.root / "kubeconfig", token=token, ca=ca)
    return [
        sys.executable, "-m", "containerdisks", "images", "verify",
        "--config", str(config or p.config), "--registry", "cluster-registry:5000/cd",
        "--kubeconfig", str(kubeconfig), "--results-file", str(p.results),
        "--log-format", "json", *flags,
    ]  # fmt: skip


def _verify(
    p: Published, fake: FakeKube, *flags: str, attempts: int | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """The command; `attempts` sets `verify_ssh_attempts` (guest agent and SSH)."""
    env = dict(FAST)
    if attempts is not None:
        env["CONTAINERDISKS_VERIFY_SSH_ATTEMPTS"] = str(attempts)
    return subprocess.run(
        _command(p, fake, *flags, **kw),
        capture_output=True,
        text=True,
        timeout=240,
        env=clean_env(**env),
        cwd=p.root,
    )


def _signalled(
    p: Published,
    fake: FakeKube,
    until: Callable[[], bool],
    *flags: str,
    sig: signal.Signals = signal.SIGTERM,
    settle: float = 0.0,
) -> tuple[int | None, str]:
    """Start the command, send `sig` once `until()` holds (then `settle` s later): its exit
    status and stderr. The process never outlives the test."""
    process = subprocess.Popen(
        _command(p, fake, "--dry-run=false", *flags),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(**FAST), cwd=p.root,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not until():
            assert time.monotonic() < deadline
            assert process.poll() is None
            time.sleep(0.02)
        time.sleep(settle)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


def _with(p: Published, **fields: Any) -> Path:
    """The test catalog with `fields` set on every entry."""
    data = yaml.safe_load(p.config.read_text())
    for e in data["entries"]:
        e.update(fields)
    path = p.root / "catalog-changed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_push_then_verify_in_kubevirt_logs_in_over_the_port_forward(
    published: Published, fake: FakeKube
) -> None:
    pushed = published.push("tiny:1")["tiny:1"]
    done = _verify(published, fake, "--dry-run=false")
    assert 0 == done.returncode, done.stderr
    record = published.read_results()["tiny:1"]
    assert "verify" == record["Stage"]
    assert "Err" not in record
    assert pushed["Tags"] == record["Tags"]
    assert "verified" in done.stdout
    assert 1 == len(fake.created)
    vm = fake.bodies[0]
    assert vm["metadata"]["name"].startswith("tiny-")
    assert len(vm["metadata"]["name"]) == 10
    spec = vm["spec"]["template"]["spec"]
    assert "Always" == vm["spec"]["runStrategy"]
    assert 0 == spec["terminationGracePeriodSeconds"]
    assert {"memory": "1Gi"} == spec["domain"]["resources"]["requests"]
    assert "firmware" not in spec["domain"]
    assert "features" not in spec["domain"]
    assert {} == spec["domain"]["devices"]["rng"]
    image = spec["volumes"][0]["containerDisk"]["image"]
    assert f"cluster-registry:5000/cd/{pushed['Tags'][0]}" == image
    assert ("GET", "/api/v1/nodes") in fake.requests  # no --target-architecture: the node's
    vm_state = next(iter(fake.deletes))
    assert vm_state == vm["metadata"]["name"]
    # the port-forward offered only `plain.kubevirt.io`, and a login went through it
    forwards = fake.portforwards
    assert forwards
    for f in forwards:
        assert (vm_state, "22", {}, ["plain.kubevirt.io"]) == (
            f["vm"], f["port"], f["query"], f["protocols"],
        )  # fmt: skip
    assert "plain.kubevirt.io" in [f["chosen"] for f in forwards]


def test_secure_boot_entry_gets_smm_and_secure_boot(
    published: Published, fake: FakeKube, tmp_path: Path
) -> None:
    published.push("tiny:1")
    fake.disks.clear()
    fake.scenarios["tiny"] = Scenario(ready_after=None, printable="ErrImagePull")
    config = _with(published, secure_boot=True)
    err = _failed(published, _verify(published, fake, "--dry-run=false", config=config))
    assert f"tiny:1: VirtualMachine {fake.created[0]} is ErrImagePull" == err
    assert 1 == len(fake.bodies)
    domain = fake.bodies[0]["spec"]["template"]["spec"]["domain"]
    assert {"bootloader": {"efi": {"secureBoot": True}}} == domain["firmware"]
    assert {"smm": {"enabled": True}} == domain["features"]


def _failed(p: Published, done: subprocess.CompletedProcess[str], key: str = "tiny:1") -> str:
    assert 1 == done.returncode, done.stderr
    record = p.read_results()[key]
    assert "verify" == record["Stage"]
    err: str = record["Err"]
    return err


def test_image_pull_error_fails_early(published: Published, fake: FakeKube) -> None:
    published.push("tiny:1")
    fake.scenarios["tiny"] = Scenario(ready_after=None, printable="ErrImagePull")
    start = time.monotonic()
    err = _failed(published, _verify(published, fake, "--dry-run=false"))
    assert "ErrImagePull" in err
    assert time.monotonic() - start < 60  # not the 600 s timeout


def test_never_ready_times_out(published: Published, fake: FakeKube) -> None:
    published.push("tiny:1")
    fake.scenarios["tiny"] = Scenario(ready_after=None, printable="Starting")
    err = _failed(published, _verify(published, fake, "--dry-run=false", "--timeout", "2"))
    assert "not ready within 2 s" in err
    assert "Starting" in err


def test_guest_agent_never_connects(published: Published, fake: FakeKube) -> None:
    published.push("tiny:1")
    fake.scenarios["tiny"] = Scenario(agent_after=None)
    config = _with(published, guest_agent=True)
    err = _failed(published, _verify(published, fake, "--dry-run=false", config=config, attempts=3))
    assert "guest agent" in err
    assert "not connected after 3 attempts" in err
    assert "does not have guest agent connected" in err


def test_guest_agent_connecting_late_passes_before_ssh(
    published: Published, fake: FakeKube
) -> None:
    published.push("tiny:1")
    fake.scenarios["tiny"] = Scenario(agent_after=0.5)
    config = _with(published, guest_agent=True)
    done = _verify(published, fake, "--dry-run=false", config=config)
    assert 0 == done.returncode, done.stderr
    paths = [path for _, path in fake.requests]
    info = [i for i, path in enumerate(paths) if path.endswith("/guestosinfo")]
    forwards = [i for i, path in enumerate(paths) if "/portforward/22/tcp" in path]
    assert len(info) >= 2
    assert forwards
    assert max(info) < min(forwards)


def test_ssh_refused_ends_after_the_bounded_attempts(published: Published, fake: FakeKube) -> None:
    """Every port-forward try counts (3 allowed here), so a refused port ends the check long
    before the 600 s --timeout, as medius's 30 x 10 s does."""
    published.push("tiny:1")
    fake.disks.clear()  # no guest behind the VM: the port-forward dial is refused
    start = time.monotonic()
    err = _failed(published, _verify(published, fake, "--dry-run=false", attempts=3))
    assert time.monotonic() - start < 60
    name = fake.created[0]
    assert (
        f"tiny:1: no SSH banner after 3 attempts (the port-forward to {name} answered HTTP 500)"
        == err
    )
    forwards = [p for _, p in fake.requests if p.endswith(f"/{name}/portforward/22/tcp")]
    assert 3 == len(forwards)


def test_a_guest_that_refuses_the_key_fails_and_its_vm_is_deleted(
    published: Published, fake: FakeKube, tiny_images: Images
) -> None:
    """The guest boots and its sshd answers through the port-forward, but the image ignores the
    seed: the login is refused until the time is up, named as such, and the VM is deleted."""
    published.push("tiny-ignores:1")
    fake.disks["tiny-ignores"] = tiny_images.ignores_seed
    done = _verify(published, fake, "--dry-run=false", "--timeout", "45")
    err = _failed(published, done, "tiny-ignores:1")
    assert re.fullmatch(
        r"tiny-ignores:1: SSH refused the key for user 'root' after \d+ attempts", err
    ), err
    assert any(f["chosen"] == "plain.kubevirt.io" for f in fake.portforwards)  # sshd answered
    [name] = fake.created
    assert {name: 1} == fake.deletes


@pytest.mark.parametrize(
    ("status", "words"), [(500, "HTTP 500"), (403, "HTTP 403"), (401, "HTTP 401")]
)
def test_api_errors_on_create_fail_the_entry(
    published: Published, fake: FakeKube, status: int, words: str
) -> None:
    published.push("tiny:1")
    if status == 403:
        fake.forbid.add(("create", "virtualmachines"))
    elif status != 401:
        fake.fail[("create", "virtualmachines")] = [status]
    token = "another-token" if status == 401 else None
    done = _verify(
        published, fake, "--dry-run=false", "--target-architecture", "amd64", token=token
    )
    err = _failed(published, done)
    assert words in err
    assert "create VirtualMachine" in err
    assert [] == fake.created
    assert {} == fake.deletes
    # a 5xx may hide a VM the server made, or one still on its way: the name is looked up
    # three times (404 each time here); a 4xx is final
    vm_calls = [m for m, p in fake.requests if "/virtualmachines" in p]
    assert (["POST", "GET", "GET", "GET"] if status >= 500 else ["POST"]) == vm_calls


def test_nodes_forbidden_without_target_architecture_is_a_config_error(
    published: Published, fake: FakeKube
) -> None:
    published.push("tiny:1")
    fake.forbid.add(("list", "nodes"))
    done = _verify(published, fake, "--dry-run=false")
    assert 2 == done.returncode
    assert "list nodes: HTTP 403" in done.stderr
    assert "--target-architecture" in done.stderr
    assert [] == fake.created


def test_dry_run_creates_nothing(published: Published, fake: FakeKube) -> None:
    published.push("tiny:1")
    before = published.results.read_text()
    done = _verify(published, fake)
    assert 0 == done.returncode, done.stderr
    assert "would boot (VM in namespace kubevirt" in done.stdout
    assert [] == fake.created
    assert before == published.results.read_text()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_wait_still_deletes_the_vm(
    published: Published, fake: FakeKube, sig: signal.Signals, code: int
) -> None:
    published.push("tiny:1")
    fake.scenarios["tiny"] = Scenario(ready_after=None)
    returncode, stderr = _signalled(
        published,
        fake,
        lambda: any(m == "GET" and "/virtualmachines/tiny-" in p for m, p in fake.requests),
        sig=sig,
    )
    assert code == returncode, stderr
    assert 1 == len(fake.created)
    assert any(m == "DELETE" for m, _ in fake.requests)


def test_kubectl_reads_the_fakes_nodes_and_vms(
    published: Published, fake: FakeKube, tmp_path: Path
) -> None:
    """Honesty: the real kubectl understands the fake's wire format."""
    published.push("tiny:1")
    fake.archs = ("amd64", "arm64")
    fake.anonymous_reads = True
    fake.scenarios["tiny"] = Scenario(ready_after=None)
    process = subprocess.Popen(
        _command(published, fake, "--dry-run=false"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(**FAST), cwd=published.root,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not fake.created:
            assert time.monotonic() < deadline
            assert process.poll() is None
            time.sleep(0.05)
        base = ["kubectl", "--server", fake.url, "--token", fake.token,
                "--cache-dir", str(tmp_path / "kube-cache")]  # fmt: skip
        env = clean_env(KUBECONFIG=str(tmp_path / "none"), **FAST)
        nodes = subprocess.run(
            [*base, "get", "nodes", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert 0 == nodes.returncode, nodes.stderr
        got = json.loads(nodes.stdout)
        assert ["amd64", "arm64"] == [n["status"]["nodeInfo"]["architecture"] for n in got["items"]]
        vms = subprocess.run(
            [*base, "get", "virtualmachines", "-n", "kubevirt", "-o", "json"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert 0 == vms.returncode, vms.stderr
        names = [v["metadata"]["name"] for v in json.loads(vms.stdout)["items"]]
        assert fake.created == names
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_transient_5xx_while_waiting_is_retried(published: Published, fake: FakeKube) -> None:
    """medius aborts the wait on any GET error; here a 500/503 is retried within the timeout."""
    published.push("tiny:1")
    fake.scenarios["tiny"] = Scenario(ready_after=None, printable="ErrImagePull")
    fake.fail[("get", "virtualmachines")] = [500, 503]
    err = _failed(published, _verify(published, fake, "--dry-run=false"))
    assert "ErrImagePull" in err
    gets = [p for m, p in fake.requests if m == "GET" and "/virtualmachines/tiny-" in p]
    assert len(gets) == 3


def _delete_by_hand(fake: FakeKube, where: str) -> None:
    """What a person does with a left-behind VM: `DELETE` it by its `<ns>/<name>`."""
    ns, name = where.split("/")
    url = f"{fake.url}/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}"
    request = urllib.request.Request(
        url, method="DELETE", headers={"Authorization": f"Bearer {fake.token}"}
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    with direct.open(request, timeout=30) as response:
        assert 200 == response.status


def test_a_transient_500_on_delete_is_retried_and_the_vm_is_gone(
    published: Published, fake: FakeKube
) -> None:
    published.push("tiny:1")
    fake.fail[("delete", "virtualmachines")] = [500]
    done = _verify(published, fake, "--dry-run=false")
    assert 0 == done.returncode, done.stderr
    assert "Err" not in published.read_results()["tiny:1"]
    deletes = [p for m, p in fake.requests if m == "DELETE"]
    assert 2 == len(deletes)  # the 500, then the retry that removed it
    assert [] == fake.live
    assert {fake.created[0]: 1} == fake.deletes


def test_a_persistent_403_on_delete_fails_the_entry_naming_the_vm(
    published: Published, fake: FakeKube
) -> None:
    """The guest passed, but a VM left running must not be reported as verified."""
    published.push("tiny:1")
    fake.forbid.add(("delete", "virtualmachines"))
    done = _verify(published, fake, "--dry-run=false")
    err = _failed(published, done)
    name = fake.created[0]
    assert f"tiny:1: VM kubevirt/{name} was left behind (delete: HTTP 403 Forbidden" in err
    assert err.endswith("; delete it by hand")
    assert "\n" not in err
    assert f"failed: VM kubevirt/{name} was left behind" in done.stdout
    assert 1 == len([m for m, _ in fake.requests if m == "DELETE"])  # a 403 is not retried
    assert [name] == fake.live
    fake.forbid.clear()
    where = re.search(r"VM (\S+) was left behind", err)
    assert where is not None
    _delete_by_hand(fake, where.group(1))


def test_a_create_answered_500_after_the_vm_was_stored_still_deletes_it(
    published: Published, fake: FakeKube
) -> None:
    """The server made the VM but the answer was an error: the tool finds its own VM (by its
    run's annotation) and deletes it."""
    published.push("tiny:1")
    fake.disks.clear()
    fake.fail_after_store.append(500)
    err = _failed(
        published, _verify(published, fake, "--dry-run=false", "--target-architecture", "amd64")
    )
    name = fake.created[0]
    assert err.startswith(f"tiny:1: create VirtualMachine kubevirt/{name}: HTTP 500"), err
    assert "left behind" not in err
    assert {name: 1} == fake.deletes
    assert [] == fake.live


def test_a_signal_during_create_still_deletes_the_vm_the_server_made(
    published: Published, fake: FakeKube
) -> None:
    """SIGTERM while the create's answer is still on its way: the VM exists on the server,
    the tool never heard so, and it is deleted anyway."""
    published.push("tiny:1")
    fake.disks.clear()
    fake.create_delay = 120
    returncode, stderr = _signalled(
        published, fake, lambda: bool(fake.created), "--target-architecture", "amd64", settle=0.2
    )
    assert 143 == returncode, stderr
    name = fake.created[0]
    vm_calls = [m for m, p in fake.requests if "/virtualmachines" in p]
    assert ["POST", "GET", "DELETE"] == vm_calls  # looked up (ours), then deleted
    assert {name: 1} == fake.deletes
    assert [] == fake.live


def test_a_create_that_lands_after_the_first_lookup_is_still_deleted(
    published: Published, fake: FakeKube
) -> None:
    """SIGTERM while the create is on its way to the store: the first lookup finds nothing,
    the VM lands a moment later, and a later lookup finds it and deletes it."""
    published.push("tiny:1")
    fake.disks.clear()
    fake.store_delay = 1.5
    create = ("POST", "/apis/kubevirt.io/v1/namespaces/kubevirt/virtualmachines")
    returncode, stderr = _signalled(
        published, fake, lambda: create in fake.requests, "--target-architecture", "amd64"
    )
    assert 143 == returncode, stderr
    [name] = fake.created
    vm_calls = [m for m, p in fake.requests if "/virtualmachines" in p]
    assert vm_calls[0] == "POST"
    assert vm_calls[-1] == "DELETE"
    assert set(vm_calls[1:-1]) == {"GET"}
    assert len(vm_calls) >= 4  # at least one lookup saw nothing yet
    assert {name: 1} == fake.deletes
    assert [] == fake.live


def test_a_real_name_collision_on_create_fails_without_touching_the_other_vm(
    published: Published, fake: FakeKube
) -> None:
    """Another party holds the name (the fake's store really has it): 409 AlreadyExists is a
    definite answer, and that VM is not the tool's to look up or delete."""
    published.push("tiny:1")
    fake.disks.clear()
    fake.squat = True
    done = _verify(published, fake, "--dry-run=false", "--target-architecture", "amd64")
    err = _failed(published, done)
    [name] = fake.squatters
    assert (
        f"tiny:1: create VirtualMachine kubevirt/{name}: HTTP 409 Conflict: "
        f'virtualmachines.kubevirt.io "{name}" already exists'
    ) == err
    assert [] == fake.created  # the tool made nothing
    assert [name] == fake.live  # and the other party's VM is still there
    assert {} == fake.deletes
    assert ["POST"] == [m for m, p in fake.requests if "/virtualmachines" in p]
    del fake.vms[("kubevirt", name)]  # the other party's business, not the fixture's


PHASES = {
    "ready wait": (("get", "virtualmachines"), "get VirtualMachine {name}: HTTP {status}", False),
    "guestosinfo": (
        ("get", "virtualmachineinstances/guestosinfo"),
        "guestosinfo of {name}: HTTP {status}",
        True,
    ),
    "port-forward": (
        ("get", "virtualmachineinstances/portforward"),
        "port-forward to {name}: HTTP {status}",
        False,
    ),
}


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("phase", sorted(PHASES))
def test_401_or_403_after_create_fails_the_entry_and_deletes_the_vm(
    published: Published, fake: FakeKube, phase: str, status: int
) -> None:
    published.push("tiny:1")
    fake.disks.clear()
    call, words, agent = PHASES[phase]
    (fake.unauthorized if status == 401 else fake.forbid).add(call)
    config = _with(published, guest_agent=agent)
    start = time.monotonic()
    done = _verify(
        published, fake, "--dry-run=false", "--target-architecture", "amd64", config=config
    )
    err = _failed(published, done)
    name = fake.created[0]
    assert f"tiny:1: {words.format(name=name, status=status)}" in err
    assert "left behind" not in err
    assert time.monotonic() - start < 60  # at once, not after retries or the timeout
    assert {name: 1} == fake.deletes
    if phase != "ready wait":  # the phases before it passed
        assert any(f"/virtualmachines/{name}" in p for m, p in fake.requests if m == "GET")


def test_a_persistent_500_while_waiting_ends_at_the_timeout_and_deletes_the_vm(
    published: Published, fake: FakeKube
) -> None:
    published.push("tiny:1")
    fake.disks.clear()
    fake.fail[("get", "virtualmachines")] = [500] * 1000
    done = _verify(published, fake, "--dry-run=false", "--timeout", "2")
    err = _failed(published, done)
    name = fake.created[0]
    assert f"tiny:1: VirtualMachine {name} not ready within 2 s (last: HTTP 500)" == err
    assert {name: 1} == fake.deletes


def _row(stdout: str, key: str) -> list[str]:
    """The table row of `key`: ENTRY, ARCH, RESULT."""
    line = next(line for line in stdout.splitlines() if line.startswith(f"{key} "))
    entry, arch, result = line.split(maxsplit=2)
    return [entry, arch, result]


def test_without_target_architecture_the_first_nodes_arch_is_chosen(
    published: Published, fake: FakeKube
) -> None:
    """Nodes arm64 first, then amd64: arm64 is verified, so the x86_64-only entry is skipped
    and its record stays as push wrote it."""
    pushed = published.push("tiny:1")["tiny:1"]
    fake.archs = ("arm64", "amd64")
    done = _verify(published, fake, "--dry-run=false")
    assert 0 == done.returncode, done.stderr
    assert ["tiny:1", "aarch64", "skipped: no arm64 image"] == _row(done.stdout, "tiny:1")
    assert pushed == published.read_results()["tiny:1"]
    assert [] == fake.created
    assert '"nodes_disagree"' in done.stderr


def test_a_non_default_namespace_gets_the_vm(published: Published, fake: FakeKube) -> None:
    published.push("tiny:1")
    fake.disks.clear()
    fake.scenarios["tiny"] = Scenario(ready_after=None, printable="ErrImagePull")
    done = _verify(published, fake, "--dry-run=false", "--namespace", "verify-here")
    assert "ErrImagePull" in _failed(published, done)
    name = fake.created[0]
    assert "verify-here" == fake.bodies[0]["metadata"]["namespace"]
    vm_calls = [(m, p) for m, p in fake.requests if "/virtualmachines" in p]
    assert vm_calls
    assert all("/namespaces/verify-here/virtualmachines" in p for _, p in vm_calls)
    assert ("DELETE", f"/apis/kubevirt.io/v1/namespaces/verify-here/virtualmachines/{name}") in [
        (m, p.split("?")[0]) for m, p in vm_calls
    ]
    assert {name: 1} == fake.deletes


def test_no_fail_exits_0_with_the_failed_entry_recorded(
    published: Published, fake: FakeKube
) -> None:
    published.push("tiny:1")
    fake.disks.clear()
    fake.scenarios["tiny"] = Scenario(ready_after=None, printable="ErrImagePull")
    done = _verify(published, fake, "--dry-run=false", "--no-fail")
    assert 0 == done.returncode, done.stderr
    record = published.read_results()["tiny:1"]
    assert "verify" == record["Stage"]
    assert f"tiny:1: VirtualMachine {fake.created[0]} is ErrImagePull" == record["Err"]
    assert _row(done.stdout, "tiny:1")[2].startswith("failed: VirtualMachine")


def test_two_workers_verify_two_entries_at_once_and_delete_both(
    published: Published, fake: FakeKube
) -> None:
    published.push("tiny:1")
    published.push("tiny-unsigned-sb:1")
    fake.disks["tiny-unsigned-sb"] = fake.disks["tiny"]  # the fake boots it with BIOS
    done = _verify(published, fake, "--dry-run=false", "--workers", "2")
    assert 0 == done.returncode, done.stderr
    results = published.read_results()
    for key in ("tiny:1", "tiny-unsigned-sb:1"):
        assert "verify" == results[key]["Stage"]
        assert "Err" not in results[key]
        assert _row(done.stdout, key)[2].startswith("verified in ")
    assert 2 == len(fake.created)
    assert 2 == fake.most_live  # both VMs were up at the same time
    assert dict.fromkeys(fake.created, 1) == fake.deletes


def test_over_https_with_the_kubeconfigs_ca_the_port_forward_is_wss(
    published: Published, tls_fake: FakeKube
) -> None:
    fake = tls_fake
    assert fake.url.startswith("https://")
    published.push("tiny:1")
    done = _verify(published, fake, "--dry-run=false")
    assert 0 == done.returncode, done.stderr
    record = published.read_results()["tiny:1"]
    assert ("verify", None) == (record["Stage"], record.get("Err"))
    assert 1 == len(fake.created)
    # the websocket went over TLS (wss), was upgraded, and a login went through it
    assert fake.portforwards
    assert all(f["tls"] for f in fake.portforwards)
    assert "plain.kubevirt.io" in [f["chosen"] for f in fake.portforwards]


@pytest.mark.parametrize("arch", [None, "amd64"])
def test_over_https_without_the_ca_fails_with_one_line_naming_the_certificate(
    published: Published, tls_fake: FakeKube, arch: str | None
) -> None:
    """Without --target-architecture, listing nodes fails: a config error before anything is
    created; with it, the create fails (no connection, so no VM and no lookup for one)."""
    fake = tls_fake
    published.push("tiny:1")
    flags = ("--target-architecture", arch) if arch else ()
    done = _verify(published, fake, "--dry-run=false", *flags, ca=False)
    untrusted = (
        f"the TLS certificate of the API server 127.0.0.1:{fake.port} is not trusted "
        "(unable to get local issuer certificate); give the cluster's CA (kubeconfig "
        "certificate-authority, or the service account's ca.crt in a pod)"
    )
    if arch is None:
        assert 2 == done.returncode, done.stderr
        assert f"containerdisks: images verify: list nodes: {untrusted}\n" == done.stderr
    else:
        err = _failed(published, done)
        assert re.fullmatch(
            rf"tiny:1: create VirtualMachine kubevirt/tiny-[a-z0-9]{{5}}: {re.escape(untrusted)}",
            err,
        ), err
        assert "Traceback" not in done.stderr
    assert [] == fake.requests  # no request got through the handshake
    assert [] == fake.created


def test_in_cluster_config_uses_the_service_account_as_a_pod_does(
    published: Published, tls_fake: FakeKube, tmp_path: Path
) -> None:
    """No --kubeconfig, no KUBECONFIG, an empty HOME: the service account's token and ca.crt
    under /var/run/secrets/kubernetes.io/serviceaccount, mounted in a private mount namespace
    (a tmpfs on /run) so the host's /run is never written."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    probe = subprocess.run([*unshare, "true"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here (unshare --mount: {probe.stderr!r})")
    fake = tls_fake
    assert fake.ca is not None
    published.push("tiny:1")
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(fake.token)  # no newline, as the kubelet writes it
    shutil.copy(fake.ca, account / "ca.crt")
    home = tmp_path / "home"
    home.mkdir()
    command = _command(published, fake, "--dry-run=false")
    at = command.index("--kubeconfig")
    del command[at : at + 2]
    where = "/run/secrets/kubernetes.io/serviceaccount"
    script = (
        f'mount -t tmpfs tmpfs /run && mkdir -p {where} && cp "$1/token" "$1/ca.crt" {where}/ '
        '&& shift && exec "$@"'
    )
    env = clean_env(
        **FAST,
        HOME=str(home),
        KUBERNETES_SERVICE_HOST="127.0.0.1",
        KUBERNETES_SERVICE_PORT=str(fake.port),
    )
    env.pop("KUBECONFIG", None)
    done = subprocess.run(
        [*unshare, "sh", "-c", script, "sh", str(account), *command],
        capture_output=True, text=True, timeout=240, env=env, cwd=published.root,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    record = published.read_results()["tiny:1"]
    assert ("verify", None) == (record["Stage"], record.get("Err"))
    assert "verified" in done.stdout
    # every request, the port-forward's included, carried the service account's token, over TLS
    assert {f"Bearer {fake.token}"} == fake.bearers
    assert ("GET", "/api/v1/nodes") in fake.requests
    assert 1 == len(fake.created)
    assert all(f["tls"] for f in fake.portforwards)
    assert "plain.kubevirt.io" in [f["chosen"] for f in fake.portforwards]
    host_token = Path(where) / "token"  # the host's /run was not written
    assert not host_token.exists() or fake.token != host_token.read_text()


def test_master_replaces_the_kubeconfigs_server(published: Published, fake: FakeKube) -> None:
    """medius's `--master` (KubeVirt's kubecli flag): the API server, over the kubeconfig's."""
    published.push("tiny:1")
    command = _command(published, fake)
    kubeconfig = Path(command[command.index("--kubeconfig") + 1])
    doc = yaml.safe_load(kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # nothing listens there
    kubeconfig.write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        [*command, "--master", fake.url], capture_output=True, text=True, timeout=120,
        env=clean_env(**FAST), cwd=published.root,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    assert re.search(r"tiny:1\s+\S+\s+would boot", done.stdout), done.stdout
    assert ("GET", "/api/v1/nodes") in fake.requests


def test_a_kubeconfig_variable_naming_no_file_is_named_in_the_error(
    published: Published, fake: FakeKube, tmp_path: Path
) -> None:
    published.push("tiny:1")
    command = _command(published, fake)
    at = command.index("--kubeconfig")
    del command[at : at + 2]
    missing = tmp_path / "no-such-kubeconfig"
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=published.root,
        env=clean_env(**FAST, KUBECONFIG=str(missing), HOME=str(tmp_path)),
    )  # fmt: skip
    assert 2 == done.returncode, done.stderr
    assert [
        f"containerdisks: images verify: kubernetes config: KUBECONFIG={missing}: no such file"
    ] == done.stderr.strip().splitlines()
    assert [] == fake.requests


def test_verify_key_refuses_before_any_vm_is_created(
    published: Published, fake: FakeKube, tmp_path: Path
) -> None:
    """In KubeVirt the digest `Tags[0]` names in `--registry` is checked with the key before a
    VirtualMachine is created: the wrong key is refused in one line and the API sees no VM; the
    right key passes and the VM boots."""
    key = keypair(tmp_path)
    published.push("tiny:1", "--sign-key", str(key))
    pushed = published.results.read_text()
    other = keypair(tmp_path, "other").with_suffix(".pub")
    registry = ("--registry", published.target)  # read from here, as the cluster would pull
    done = _verify(published, fake, "--dry-run=false", "--verify-key", str(other), *registry)
    err = _failed(published, done)
    assert err.startswith(f"tiny:1: not signed with public key {other}: ")
    assert "does not verify with public key" in err
    assert "\n" not in err
    assert [] == fake.created
    assert not [r for r in fake.requests if r[0] == "POST"]  # nothing created at all

    published.results.write_text(pushed)
    right = key.with_suffix(".pub")
    done = _verify(published, fake, "--dry-run=false", "--verify-key", str(right), *registry)
    assert 0 == done.returncode, done.stderr
    assert "verified" in done.stdout
    assert 1 == len(fake.created)
