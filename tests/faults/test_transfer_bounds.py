"""Hostile upstream servers against `images push` as a real process: bounded bytes, time, memory.

Real registry (behind a fault proxy where the test must see what reached it), real loopback
upstream playing the attacker: decompression bombs, a 100 TiB Content-Length, an endless body, a
server that sends one byte per second. Peak RSS is the kernel's own count for the command
(tests/support/peak_rss.py), so nothing the test process does can hide or inflate it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import lzma
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import peak_rss
from tests.support.cli import clean_env, command, static_catalog
from tests.support.disks import fedora_link, sha256
from tests.support.fault_proxy import FaultProxy
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer, put

BOMB_SIZE = 1 << 30
RSS_LIMIT_MIB = 200


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float
    seconds: float

    def failures(self) -> dict[str, str]:
        out = {}
        for line in self.stderr.splitlines():
            event = json.loads(line)
            if event["event"] in ("publish_failed", "plan_failed", "discovery_failed"):
                out[event["entry"]] = event["error"]
        return out


def run_measured(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 180) -> Run:
    """Run `args`; return its output, exit status and its own peak RSS (tests/support/peak_rss)."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with out.open("wb") as o, err.open("wb") as e:
        m = peak_rss.run_measured(args, cwd=cwd, env=env, stdout=o, stderr=e, timeout=timeout)
    return Run(m.returncode, out.read_text(), err.read_text(), m.peak_rss_mib, m.seconds)


def push_static(
    srv: UpstreamServer,
    target: str,
    cwd: Path,
    config: Path,
    *flags: str,
    timeout: float = 180,
    **env: str,
) -> Run:
    args = command(srv, target, "--config", str(config), "--focus", "bomb:1", *flags, cwd=cwd)
    return run_measured(
        args, cwd, clean_env(**{f"CONTAINERDISKS_{k}": v for k, v in env.items()}), timeout
    )


def spools(cwd: Path) -> list[str]:
    work = cwd / "work"
    return sorted(p.name for p in work.iterdir()) if work.exists() else []


def repository_tags(registry: Registry, repository: str) -> list[str]:
    try:
        return registry.list_tags(repository)
    except RuntimeError:  # the repository does not exist
        return []


def writes(log: list[Any]) -> list[str]:
    return [f"{e.method} {e.path}" for e in log if e.method in ("POST", "PATCH", "PUT")]


# -- decompression bombs --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """1 GiB of zeros as one xz stream (156 KB: the issue's bomb) and one gzip member (1 MB),
    compressed block by block: the 1 GiB is never in memory."""
    root = tmp_path_factory.mktemp("bombs")
    zeros = b"\0" * (1 << 20)
    compressors: dict[str, Any] = {
        "xz": lzma.LZMACompressor(preset=1),
        "gz": zlib.compressobj(9, zlib.DEFLATED, 31),
    }
    paths = {}
    for suffix, c in compressors.items():
        path = root / f"bomb.qcow2.{suffix}"
        with path.open("wb") as f:
            for _ in range(BOMB_SIZE // len(zeros)):
                f.write(c.compress(zeros))
            f.write(c.flush())
        paths[suffix] = path
    return paths


def serve_bomb(srv: UpstreamServer, tmp_path: Path, bomb: Path) -> Path:
    url = f"https://example.org/bombs/{bomb.name}"
    put(srv.root, url, bomb)
    return static_catalog(tmp_path / "catalog.yaml", url, sha256(bomb.read_bytes()), name="bomb")


@pytest.mark.parametrize("suffix", ["xz", "gz"])
def test_a_bomb_over_max_image_bytes_fails_in_bounded_memory_and_publishes_nothing(
    tmp_path: Path, registry: Registry, bombs: dict[str, Path], suffix: str
) -> None:
    cap = 256 << 20
    with UpstreamServer(tmp_path / "up") as srv:
        config = serve_bomb(srv, tmp_path, bombs[suffix])
        run = push_static(srv, f"{registry.host}/cd", tmp_path, config, MAX_IMAGE_BYTES=str(cap))
    assert 1 == run.returncode, run.stderr
    assert "Traceback" not in run.stderr
    url = f"https://example.org/bombs/{bombs[suffix].name}"
    assert {
        "bomb:1": f"bomb:1: {url}: decompressed image is larger than max_image_bytes ({cap} bytes)"
    } == run.failures()
    assert run.peak_rss_mib < RSS_LIMIT_MIB, f"peak RSS {run.peak_rss_mib:.0f} MiB"
    assert [] == repository_tags(registry, "cd/bomb")
    assert [] == spools(tmp_path)


@pytest.mark.parametrize("suffix", ["xz", "gz"])
def test_a_1_gib_bomb_under_the_cap_is_published_in_bounded_memory(
    tmp_path: Path, registry: Registry, bombs: dict[str, Path], suffix: str
) -> None:
    """The issue's 156 KB xz of 1 GiB of zeros (and its gzip twin) is a valid image."""
    with UpstreamServer(tmp_path / "up") as srv:
        config = serve_bomb(srv, tmp_path, bombs[suffix])
        run = push_static(srv, f"{registry.host}/cd", tmp_path, config)
    assert 0 == run.returncode, run.stderr[-3000:]
    assert run.peak_rss_mib < RSS_LIMIT_MIB, f"peak RSS {run.peak_rss_mib:.0f} MiB"
    pushed = [json.loads(line) for line in run.stderr.splitlines()]
    layer = next(e for e in pushed if e["event"] == "layer_pushed")
    assert BOMB_SIZE == layer["disk"]
    assert "1" in repository_tags(registry, "cd/bomb")


# -- hostile download servers ---------------------------------------------------------------------


def forever(chunk: bytes, every: float) -> Callable[[], AsyncIterator[bytes]]:
    async def body() -> AsyncIterator[bytes]:
        while True:
            yield chunk
            await asyncio.sleep(every)

    return body


IMAGE = "https://example.org/hostile/disk.qcow2"


def test_a_100_tib_content_length_is_refused_before_the_registry_sees_a_byte(
    tmp_path: Path, registry: Registry
) -> None:
    announced = 100 << 40
    with UpstreamServer(tmp_path / "up") as srv, FaultProxy(registry.url) as proxy:
        srv.respond_stream(IMAGE, forever(b"\0" * 65536, 0.01), content_length=announced)
        config = static_catalog(tmp_path / "catalog.yaml", IMAGE, "0" * 64, name="bomb")
        run = push_static(srv, f"{proxy.host}/cd", tmp_path, config, timeout=60)
        log = proxy.log
    assert 1 == run.returncode, run.stderr
    assert {
        "bomb:1": f"bomb:1: {IMAGE}: Content-Length {announced} is larger than max_image_bytes "
        f"({64 << 30} bytes)"
    } == run.failures()
    assert [] == writes(log), "no upload may start"
    assert run.seconds < 30


def test_a_download_larger_than_releases_json_declares_is_refused(
    tmp_path: Path, registry: Registry, fedora: Any
) -> None:
    srv, disks = fedora
    link = fedora_link("39", "x86_64")
    path = srv.root / "getfedora.org" / "releases.json"
    items = json.loads(path.read_text())
    for item in items:
        if item["link"] == link:
            item["size"] = "1000"
    path.write_text(json.dumps(items))
    with FaultProxy(registry.url) as proxy:
        args = command(srv, f"{proxy.host}/cd", cwd=tmp_path)
        run = run_measured(args, tmp_path, clean_env())
        log = proxy.log
    assert 1 == run.returncode, run.stderr
    size = len(disks[("39", "x86_64")])
    assert {
        "fedora:39": f"fedora:39: {link}: Content-Length {size} is larger than the size the "
        "upstream metadata declares (1000 bytes)"
    } == run.failures()
    assert not [w for w in writes(log) if "/fedora/manifests/39" in w]
    assert {"40", "41-beta", "latest"} <= set(registry.list_tags("cd/fedora"))


def test_an_endless_body_is_cut_at_the_cap_and_nothing_is_published(
    tmp_path: Path, registry: Registry
) -> None:
    cap = 32 << 20
    with UpstreamServer(tmp_path / "up") as srv, FaultProxy(registry.url) as proxy:
        srv.respond_stream(IMAGE, forever(b"\0" * (1 << 20), 0.0))  # chunked, no length
        config = static_catalog(tmp_path / "catalog.yaml", IMAGE, "0" * 64, name="bomb")
        run = push_static(
            srv, f"{proxy.host}/cd", tmp_path, config, timeout=60, MAX_IMAGE_BYTES=str(cap)
        )
        log = proxy.log
    assert 1 == run.returncode, run.stderr
    assert {
        "bomb:1": f"bomb:1: {IMAGE}: download is larger than max_image_bytes ({cap} bytes)"
    } == run.failures()
    assert [] == writes(log)
    assert [] == spools(tmp_path)
    assert run.seconds < 30


def test_a_one_byte_per_second_upstream_fails_within_the_rate_window(
    tmp_path: Path, registry: Registry
) -> None:
    with UpstreamServer(tmp_path / "up") as srv, FaultProxy(registry.url) as proxy:
        srv.respond_stream(IMAGE, forever(b"\0", 1.0), content_length=1 << 20)
        config = static_catalog(
            tmp_path / "catalog.yaml", IMAGE, hashlib.sha256().hexdigest(), name="bomb"
        )
        run = push_static(
            srv,
            f"{proxy.host}/cd",
            tmp_path,
            config,
            timeout=60,
            MIN_TRANSFER_RATE="1000",
            MIN_TRANSFER_RATE_WINDOW="2",
            RETRIES="2",
        )
        log = proxy.log
    assert 1 == run.returncode, run.stderr
    (error,) = run.failures().values()
    assert error.startswith(
        f"bomb:1: {IMAGE}: download slower than min_transfer_rate (1000 bytes/s) over 2 s ("
    ), error
    retries = [json.loads(line) for line in run.stderr.splitlines()]
    assert 1 == sum(1 for e in retries if e["event"] == "retry"), "transient: retried once"
    # Two attempts of one window each, a backoff of about a second, and the process itself.
    assert run.seconds < 25, run.seconds
    assert not [w for w in writes(log) if "/manifests/" in w]
