"""The Engine across passes: a later pass with nothing changed costs one manifest HEAD per entry,
and upstream metadata is asked again with conditional requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from containerdisks.api import Artifact
from containerdisks.catalog import load_catalog
from containerdisks.engine.core import Engine
from containerdisks.engine.spec import EntrySpec
from containerdisks.settings import Settings, load_settings
from tests.support.cli import push
from tests.support.disks import fedora_tree, make_qcow2, replace_fedora_image
from tests.support.fault_proxy import FaultProxy, Logged
from tests.support.upstream_server import UpstreamServer


async def one_pass(engine: Engine) -> dict[str, str]:
    entries, failures = await engine.discover()
    assert [] == failures
    outcomes = [await engine.sync(e) for e in entries]
    assert [] == [o.error for o in outcomes if o.error]
    return {o.key: ",".join(sorted({r.action for r in o.plan.arches})) for o in outcomes}


@contextlib.contextmanager
def published_fedora(
    tmp_path: Path, registry: Any
) -> Iterator[tuple[UpstreamServer, FaultProxy, Settings]]:
    """The Fedora tree (under `tmp_path/"up"`) published into `registry`, seen through a logging
    proxy; the settings
    of an engine that publishes there."""
    root = tmp_path / "up"
    fedora_tree(root)
    with UpstreamServer(root) as srv, FaultProxy(registry.url) as proxy:
        ns = f"{proxy.host}/cd"
        assert 0 == push(srv, ns, cwd=tmp_path).returncode
        settings = load_settings(
            {"focus": "fedora:*", "source_registry": ns, "dry_run": False},
            extra_mirrors=srv.mirrors(),
        )
        yield srv, proxy, settings


async def logged_since(proxy: FaultProxy, t0: float, count: int) -> list[Logged]:
    """The proxy's log from `t0` on, once it holds `count` requests (it logs a request when its
    response is done: let the last one land), or after a second."""
    for _ in range(50):
        seen = [e for e in proxy.log if e.started >= t0]
        if len(seen) >= count:
            break
        await asyncio.sleep(0.02)
    return seen


async def test_a_fresh_pass_reads_each_arch_once_and_heads_each_extra_tag(
    tmp_path: Path, registry: Any
) -> None:
    """What a process that has never seen the registry asks it, everything being up to date: per
    entry the top manifest, a platform manifest and a config per arch (1 + 2 x arches), one HEAD per
    tag besides `<version>` (the tag check of docs/architecture.md "How a push flows"), and one
    `/v2/` per process."""
    with published_fedora(tmp_path, registry) as (_, proxy, settings):
        async with Engine(
            settings, load_catalog({}, config_name="test", signatures=False)
        ) as engine:
            t0 = time.monotonic()
            entries, failures = await engine.discover()
            assert [] == failures
            outcomes = [await engine.sync(e) for e in entries]
            assert {"up-to-date"} == {a.action for o in outcomes for a in o.plan.arches}

        expected: Counter[tuple[str, str]] = Counter({("GET", "/v2/"): 1})
        for entry in entries:
            arches = [a for a in entry.artifacts if isinstance(a, Artifact)]
            base = f"/v2/cd/{entry.name}"
            expected["GET", f"{base}/manifests/{entry.version}"] += 1
            if len(arches) > 1:
                expected["GET", f"{base}/manifests/<digest>"] += len(arches)
            expected["GET", f"{base}/blobs/<digest>"] += len(arches)
            for tag in EntrySpec.of(entry, keep_timestamp_tags=0).tags:
                if tag != entry.version:
                    expected["HEAD", f"{base}/manifests/{tag}"] += 1
        assert any(k[0] == "HEAD" for k in expected), "the tree has no entry with extra tags"
        assert any("manifests/<digest>" in k[1] for k in expected), "no multi-arch entry"
        seen = await logged_since(proxy, t0, sum(expected.values()))
        shapes = Counter(
            (e.method, e.path.split("sha256:")[0] + "<digest>" if "sha256:" in e.path else e.path)
            for e in seen
        )
        assert expected == shapes


async def test_second_pass_costs_one_head_per_entry(tmp_path: Path, registry: Any) -> None:
    with published_fedora(tmp_path, registry) as (srv, proxy, settings):
        async with Engine(
            settings, load_catalog({}, config_name="test", signatures=False)
        ) as engine:
            first = await one_pass(engine)
            assert {
                "fedora:40": "up-to-date",
                "fedora:39": "up-to-date",
                "fedora:41-beta": "up-to-date",
            } == first
            t0, up_before = time.monotonic(), len(srv.requests)
            second = await one_pass(engine)
            registry_requests = await logged_since(proxy, t0, 3)
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
            replace_fedora_image(tmp_path / "up", "39", "x86_64", new)
            third = await one_pass(engine)
            assert "build,reuse" == third["fedora:39"]


async def test_a_later_pass_follows_rotated_credentials(
    tmp_path: Path, basic_registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted Secret changes under a running daemon: the next pass reads the auth file again
    and uses what it says; a file it cannot read keeps the credentials it has."""
    root = tmp_path / "up"
    fedora_tree(root)
    user, password = basic_registry.credentials
    auth = tmp_path / "auth.json"

    def write_auth(secret: str) -> None:
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        auth.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))

    write_auth("not-the-password")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    with UpstreamServer(root) as srv:
        values = {"focus": "fedora:40", "dry_run": False}
        values["source_registry"] = f"{basic_registry.host}/cd"
        settings = load_settings(values, extra_mirrors=srv.mirrors())
        async with Engine(
            settings, load_catalog({}, config_name="test", signatures=False)
        ) as engine:

            async def errors() -> list[str | None]:
                entries, failures = await engine.discover()
                assert [] == failures
                return [(await engine.sync(e)).error for e in entries]

            (refused,) = await errors()
            assert refused is not None
            assert "401" in refused
            assert password not in refused
            assert "not-the-password" not in refused

            write_auth(password)  # the Secret rotated
            assert [None] == await errors()
            assert "40" in basic_registry.list_tags("cd/fedora")

            auth.write_text("{ half written")  # unreadable: the current credentials stay
            assert [None] == await errors()
