"""Bad upstream bytes and unreachable upstream files fail one entry only; nothing half-published.

Real registry, real loopback upstream, the CLI as a subprocess. Fedora 40, 39 and 41-beta are
published side by side; one of them is broken each time.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import clean_env, push
from tests.support.disks import fedora_link, make_qcow2
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.upstream_server import put


def tags(ref: str) -> list[str]:
    out = subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return sorted(json.loads(out.stdout)["Tags"]) if out.returncode == 0 else []


def errors(stderr: str) -> dict[str, str]:
    out = {}
    for line in stderr.splitlines():
        event = json.loads(line)
        if event["event"] in ("publish_failed", "plan_failed", "discovery_failed"):
            out[event["entry"]] = event["error"]
    return out


def test_checksum_mismatch_fails_that_entry_only(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    link = fedora_link("39", "aarch64")
    put(srv.root, link, make_qcow2(tmp_path / "evil.qcow2", "not what releases.json says"))
    with FaultProxy(registry.url) as proxy:
        ns = f"{proxy.host}/cd"
        result = push(srv, ns, cwd=tmp_path)
        log = proxy.log
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    failed = errors(result.stderr)
    assert ["fedora:39"] == list(failed)
    assert f"{link}: checksum mismatch: expected sha256 " in failed["fedora:39"]
    assert "\n" not in failed["fedora:39"]
    # No manifest was written for 39 and its upload was cancelled; the others are published.
    assert [] == [t for t in tags(f"{registry.host}/cd/fedora") if t.startswith("39")]
    assert {"40", "41-beta", "latest"} <= set(tags(f"{registry.host}/cd/fedora"))
    assert any(e.method == "DELETE" and "/blobs/uploads/" in e.path for e in log)
    results = json.loads((tmp_path / "results.json").read_text())
    assert failed["fedora:39"] == results["fedora:39"]["Err"]
    assert "Tags" not in results["fedora:39"]
    assert "fedora:40" in results["fedora:40"]["Tags"]
    again = push(srv, f"{registry.host}/cd", "--no-fail", cwd=tmp_path)
    assert 0 == again.returncode


@pytest.mark.parametrize(
    ("what", "status", "needle"),
    [
        ("image", 404, "HTTP 404"),
        ("image", 500, "HTTP 500"),
        ("metadata", 404, "HTTP 404"),
    ],
)
def test_upstream_http_errors_name_the_url(
    tmp_path: Path, registry: Any, fedora: Any, what: str, status: int, needle: str
) -> None:
    srv, _ = fedora
    url = fedora_link("40", "x86_64") if what == "image" else "https://getfedora.org/releases.json"
    srv.respond(url, status, times=None)
    env = clean_env(CONTAINERDISKS_RETRIES="2")
    result = push(srv, f"{registry.host}/cd", cwd=tmp_path, env=env)
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    failed = errors(result.stderr)
    key = "fedora:40" if what == "image" else "fedora:*"
    assert [key] == list(failed)
    assert failed[key].startswith(
        f"{key}: {url}: {needle}" if what == "image" else f"{url}: {needle}"
    )
    if what == "image":
        assert {"39", "41-beta"} <= set(tags(f"{registry.host}/cd/fedora"))
        assert not {"40", "latest"} & set(tags(f"{registry.host}/cd/fedora"))


def test_truncated_download_fails_the_entry(tmp_path: Path, registry: Any, fedora: Any) -> None:
    srv, _ = fedora
    link = fedora_link("41 Beta", "x86_64")
    with FaultProxy(srv.base_url) as up:
        up.add(
            Rule("GET", link.removeprefix("https:/"), "truncate", after_bytes=100_000, times=None)
        )
        env = clean_env(CONTAINERDISKS_RETRIES="2")
        result = push(srv, f"{registry.host}/cd", cwd=tmp_path, env=env, via=up.url)
    assert 1 == result.returncode, result.stderr
    failed = errors(result.stderr)
    assert ["fedora:41-beta"] == list(failed)
    assert link in failed["fedora:41-beta"]
    assert not [t for t in tags(f"{registry.host}/cd/fedora") if t.startswith("41")]
    assert not (tmp_path / "work").exists() or [] == list((tmp_path / "work").iterdir())


def test_a_stalled_upstream_times_out(tmp_path: Path, registry: Any, fedora: Any) -> None:
    srv, _ = fedora
    link = fedora_link("39", "x86_64")
    with FaultProxy(srv.base_url) as up:
        up.add(Rule("GET", link.removeprefix("https:/"), "stall", times=None))
        env = clean_env(CONTAINERDISKS_RETRIES="1", CONTAINERDISKS_READ_TIMEOUT="1")
        result = push(srv, f"{registry.host}/cd", cwd=tmp_path, env=env, via=up.url)
    assert 1 == result.returncode, result.stderr
    failed = errors(result.stderr)
    assert ["fedora:39"] == list(failed)
    assert "timed out" in failed["fedora:39"]
