"""The loopback upstream that discovery and command-line tests use (tests/support)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from containerdisks.upstream import HttpUpstream, Mirrors, parse_mirror
from tests.support.sources import mirrored_client
from tests.support.upstream_server import (
    DEFAULT_FIXTURES,
    FIXTURE_URLS,
    FIXTURES_DIR,
    UpstreamServer,
    lay_out_upstream,
    put,
    tree_path,
)

RELEASES = "https://getfedora.org/releases.json"
UBUNTU = "https://cloud-images.ubuntu.com/releases/22.04/release/SHA256SUMS"


def test_layout_puts_fixtures_at_their_canonical_paths(tmp_path: Path) -> None:
    root = lay_out_upstream(tmp_path)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert len(DEFAULT_FIXTURES) == len(files)
    assert "getfedora.org/releases.json" in files
    assert "cloud.centos.org/centos/9-stream/x86_64/images/CHECKSUM" in files
    assert "download.opensuse.org/ports/zsystems/tumbleweed/appliances/SHA256SUMS" in files
    centos9 = tree_path(root, "https://cloud.centos.org/centos/9-stream/x86_64/images/CHECKSUM")
    fixture = FIXTURES_DIR / "centos-stream/centos-stream9-x86_64.checksum"
    assert fixture.read_bytes() == centos9.read_bytes()


@pytest.mark.parametrize(
    "fixtures",
    [
        ("opensuse-microos/microos.SHA256SUM", "opensuse-tumbleweed/tumbleweed.SHA256SUM"),
        ("centos-stream/centos-stream9-x86_64.checksum", "hashsum/broken.checksum"),
    ],
)
def test_layout_refuses_two_files_for_one_url(tmp_path: Path, fixtures: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="are both"):
        lay_out_upstream(tmp_path, fixtures)


@pytest.mark.parametrize(
    "url", ["https://example.org/", "https://example.org/a/../../b", "file:///etc/passwd"]
)
def test_tree_path_refuses_non_files(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match=r"does not name a file|escapes the tree"):
        tree_path(tmp_path, url)


async def test_serves_files_with_http_semantics(tmp_path: Path) -> None:
    root = lay_out_upstream(tmp_path, ("fedora/releases.json",))
    body = (FIXTURES_DIR / "fedora/releases.json").read_bytes()
    async with UpstreamServer(root) as srv, aiohttp.ClientSession() as http:
        url = srv.url_for(RELEASES)
        async with http.get(url) as r:
            assert (200, body) == (r.status, await r.read())
            etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
        async with http.get(url, headers={"Range": "bytes=1-9"}) as r:
            assert (206, body[1:10]) == (r.status, await r.read())
        async with http.get(url, headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with http.get(url, headers={"If-Modified-Since": modified}) as r:
            assert r.status == 304
        async with http.head(url) as r:
            assert (200, str(len(body))) == (r.status, r.headers["Content-Length"])
        async with http.get(srv.url_for("https://getfedora.org/missing.json")) as r:
            assert r.status == 404
        expected = [
            ("GET", "/getfedora.org/releases.json", 200),
            ("GET", "/getfedora.org/releases.json", 206),
            ("GET", "/getfedora.org/releases.json", 304),
            ("GET", "/getfedora.org/releases.json", 304),
            ("HEAD", "/getfedora.org/releases.json", 200),
            ("GET", "/getfedora.org/missing.json", 404),
        ]
        assert expected == [(r.method, r.path, r.status) for r in srv.requests]
        assert srv.requests[1].headers["range"] == "bytes=1-9"
        assert srv.count(RELEASES) == 5
        assert srv.count(RELEASES, method="HEAD") == 1
        srv.clear()
        assert srv.requests == []


async def test_canned_answers_and_redirects_through_http_upstream(tmp_path: Path) -> None:
    root = lay_out_upstream(tmp_path, ("fedora/releases.json", "ubuntu/SHA256SUM"))
    async with UpstreamServer(root) as srv, mirrored_client(srv, attempts=3) as upstream:
        srv.respond(RELEASES, 503, headers={"Retry-After": "0"}, times=2)
        data = await upstream.get_json(RELEASES)
        assert isinstance(data, list)
        expected = [503, 503, 200]
        assert expected == [r.status for r in srv.requests]

        # getfedora.org redirects; the target is rewritten through the same mirror table.
        moved = "https://getfedora.org/moved.json"
        srv.respond(moved, 302, headers={"Location": UBUNTU}, times=None)
        text = await upstream.get_text(moved)
        assert (FIXTURES_DIR / "ubuntu/SHA256SUM").read_text() == text
        assert srv.paths()[-2:] == [
            "/getfedora.org/moved.json",
            "/cloud-images.ubuntu.com/releases/22.04/release/SHA256SUMS",
        ]
        srv.clear_responses()


async def test_per_host_mirrors(tmp_path: Path) -> None:
    root = lay_out_upstream(tmp_path, ("fedora/releases.json",))
    async with UpstreamServer(root) as srv:
        table = srv.mirrors(["getfedora.org"])
        assert {"https://getfedora.org/": f"http://127.0.0.1:{srv.port}/getfedora.org/"} == table
        async with HttpUpstream(Mirrors(table)) as upstream:
            assert await upstream.get_json(RELEASES)
        assert [parse_mirror(a) for a in srv.mirror_args(["getfedora.org"])[1::2]] == list(
            table.items()
        )
        assert srv.mirror_args()[0] == "--upstream-mirror"
        assert parse_mirror(srv.mirror_args()[1]) == ("https://", srv.base_url)


def test_runs_in_a_thread_for_subprocesses(tmp_path: Path) -> None:
    root = lay_out_upstream(tmp_path, ("fedora/releases.json",))
    put(root, "https://download.example.org/images/disk.qcow2", b"QFI\xfb" + bytes(60))
    with UpstreamServer(root) as srv:
        with urllib.request.urlopen(srv.url_for(RELEASES), timeout=10) as r:
            assert r.status == 200
        # A child process reaches it too (as `containerdisks ... --upstream-mirror` will).
        code = (
            "import sys, urllib.request\n"
            "sys.stdout.write(str(len(urllib.request.urlopen(sys.argv[1]).read())))\n"
        )
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                srv.url_for("https://download.example.org/images/disk.qcow2"),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert out == "64"
        expected = [
            "/getfedora.org/releases.json",
            "/download.example.org/images/disk.qcow2",
        ]
        assert expected == srv.paths(method="GET")
    with pytest.raises(RuntimeError, match="not running"):
        _ = srv.port


def test_fixture_table_names_existing_files() -> None:
    assert sorted(FIXTURE_URLS) == sorted(
        str(p.relative_to(FIXTURES_DIR))
        for p in FIXTURES_DIR.rglob("*")
        if p.is_file() and p.name != "SOURCES.md"
    )
