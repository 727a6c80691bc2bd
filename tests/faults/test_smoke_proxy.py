"""The fault proxy forwards a whole publish unchanged when it has no rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.cli import push
from tests.support.fault_proxy import FaultProxy


def test_publish_through_the_proxy(tmp_path: Path, registry: Any, fedora: Any) -> None:
    srv, _ = fedora
    with FaultProxy(registry.url) as proxy:
        result = push(srv, f"{proxy.host}/cd", "--focus", "fedora:40", cwd=tmp_path)
        log = proxy.log
    assert 0 == result.returncode, result.stderr
    assert {"PUT", "POST", "PATCH", "HEAD", "GET"} >= {e.method for e in log}
    assert any(e.method == "PUT" and e.path.endswith("/manifests/latest") for e in log)
