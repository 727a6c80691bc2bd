"""The Engine across passes: a later pass with nothing changed costs one manifest HEAD per entry,
and upstream metadata is asked again with conditional requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from containerdisks.engine.core import Engine
from containerdisks.settings import load_settings
from tests.support.cli import push
from tests.support.disks import fedora_tree, make_qcow2, replace_fedora_image
from tests.support.fault_proxy import FaultProxy
from tests.support.upstream_server import UpstreamServer


async def one_pass(engine: Engine) -> dict[str, str]:
    entries, failures = await engine.discover()
    assert [] == failures
    outcomes = [await engine.sync(e) for e in entries]
    assert [] == [o.error for o in outcomes if o.error]
    return {o.key: ",".join(sorted({r.action for r in o.plan.arches})) for o in outcomes}


async def test_second_pass_costs_one_head_per_entry(tmp_path: Path, registry: Any) -> None:
    root = tmp_path / "up"
    fedora_tree(root)
    with UpstreamServer(root) as srv, FaultProxy(registry.url) as proxy:
        ns = f"{proxy.host}/cd"
        assert 0 == push(srv, ns, cwd=tmp_path).returncode
        settings = load_settings(
            {"focus": "fedora:*", "source_registry": ns, "dry_run": False},
            extra_mirrors=srv.mirrors(),
        )
        async with Engine(settings, {}, "test") as engine:
            first = await one_pass(engine)
            assert {
                "fedora:40": "up-to-date",
                "fedora:39": "up-to-date",
                "fedora:41-beta": "up-to-date",
            } == first
            t0, up_before = time.monotonic(), len(srv.requests)
            second = await one_pass(engine)
            # The proxy logs a request when its response is done: let the last one land.
            for _ in range(50):
                registry_requests = [e for e in proxy.log if e.started >= t0]
                if len(registry_requests) >= 3:
                    break
                await asyncio.sleep(0.02)
            upstream_requests = srv.requests[up_before:]
            assert first == second
            assert [("HEAD", "/v2/cd/fedora/manifests/" + v) for v in ("40", "39", "41-beta")] == [
                (e.method, e.path) for e in registry_requests
            ]
            # releases.json asked again, conditionally, and answered 304.
            assert [("/getfedora.org/releases.json", 304)] == [
                (r.path, r.status) for r in upstream_requests
            ]
            assert any(
                "If-None-Match" in r.headers or "If-Modified-Since" in r.headers
                for r in upstream_requests
            )

            # An upstream change is seen on the next pass and published.
            new = make_qcow2(tmp_path / "n.qcow2", "changed upstream")
            replace_fedora_image(root, "39", "x86_64", new)
            third = await one_pass(engine)
            assert "build,reuse" == third["fedora:39"]
