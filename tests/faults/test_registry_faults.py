"""Registry faults injected by the proxy: transient ones are retried, permanent ones fail one entry.

A connection reset in the middle of a layer upload is handled by streaming that arch again from
upstream: the upstream server sees the image requested twice, the push completes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.cli import push
from tests.support.disks import fedora_link
from tests.support.fault_proxy import FaultProxy, Rule


def events(stderr: str, name: str) -> list[dict[str, Any]]:
    return [e for line in stderr.splitlines() if (e := json.loads(line))["event"] == name]


def tags(registry: Any) -> list[str]:
    out = subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{registry.host}/cd/fedora"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sorted(json.loads(out.stdout)["Tags"])


def test_transient_faults_are_retried_and_the_push_completes(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("PUT", r"/manifests/latest$", "status", status=503, times=2))
        proxy.add(
            Rule(
                "POST",
                r"/blobs/uploads/$",
                "status",
                status=429,
                headers={"Retry-After": "1"},
                times=1,
            )
        )
        proxy.add(Rule("GET", r"/manifests/", "status", status=502, times=1))
        result = push(srv, f"{proxy.host}/cd", "--focus", "fedora:40", cwd=tmp_path)
        log = proxy.log
    assert 0 == result.returncode, result.stderr
    statuses = [(e.method, e.status) for e in log]
    assert ("PUT", 503) in statuses
    assert ("POST", 429) in statuses
    assert ("GET", 502) in statuses
    latest = [e.status for e in log if e.method == "PUT" and e.path.endswith("/manifests/latest")]
    assert [503, 503, 201] == latest
    retries = events(result.stderr, "retry")
    assert len(retries) >= 3
    assert {"40", "40-1.14", "latest"} <= set(tags(registry))


def test_a_permanent_fault_fails_that_entry_with_one_line(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("PUT", r"/manifests/39$", "status", status=403, times=None))
        result = push(srv, f"{proxy.host}/cd", cwd=tmp_path)
        log = proxy.log
    assert 1 == result.returncode
    failed = events(result.stderr, "publish_failed")
    assert ["fedora:39"] == [e["entry"] for e in failed]
    message = failed[0]["error"]
    assert "403" in message
    assert "\n" not in message
    assert 1 == len([e for e in log if e.method == "PUT" and e.path.endswith("/manifests/39")])
    assert {"40", "latest", "41-beta"} <= set(tags(registry))
    assert "39" not in tags(registry)


def test_a_connection_reset_mid_upload_restreams_the_arch(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("PATCH", r"/v2/cd/fedora/blobs/uploads/", "reset", after_bytes=50_000))
        result = push(srv, f"{proxy.host}/cd", "--focus", "fedora:40", cwd=tmp_path)
    assert 0 == result.returncode, result.stderr
    retried = [e for e in events(result.stderr, "retry") if "layer of fedora:40" in e["what"]]
    assert 1 == len(retried)
    image_gets = [p for p in srv.paths() if p.endswith(".qcow2")]
    assert 3 == len(image_gets)  # two arches, one of them twice
    first = fedora_link("40", "x86_64").removeprefix("https:/")
    second = fedora_link("40", "aarch64").removeprefix("https:/")
    assert {first, second} == set(image_gets)
