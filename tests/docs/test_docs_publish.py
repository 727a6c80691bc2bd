"""`containerdisks docs publish` as a subprocess, against the fake Quay and a loopback upstream.

The fake Quay (tests/support/fake_quay.py) records every request, so each test asserts exactly
what was sent; Fedora's newest stable version is discovered from the real releases.json
fixture served on loopback. Every run's stdout and stderr are searched for the token.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import clean_env
from tests.support.fake_quay import FakeQuay
from tests.support.loopback import free_port
from tests.support.upstream_server import FIXTURES_DIR, UpstreamServer, lay_out_upstream, put

TOKEN = "quay-oauth-Zx9q7TOKEN"
FEDORA = "https://getfedora.org/releases.json"
ORG = "containerdisks"
DOCS_REPOS = [
    "almalinux",
    "centos-stream",
    "ubuntu",
    "opensuse-tumbleweed",
    "opensuse-microos",
    "opensuse-leap",
    "debian",
    "fedora",
]


def api(name: str) -> str:
    return f"/api/v1/repository/{ORG}/{name}"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamServer]:
    with UpstreamServer(lay_out_upstream(tmp_path / "up", ["fedora/releases.json"])) as srv:
        yield srv


@pytest.fixture
def quay() -> Iterator[FakeQuay]:
    with FakeQuay(TOKEN, [f"{ORG}/{n}" for n in DOCS_REPOS]) as fake:
        yield fake


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "quay-token"
    path.write_text(f"  {TOKEN}\n")  # stripped, as medius does
    return path


def run(
    upstream: UpstreamServer,
    quay_url: str | None,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`docs publish` with the Quay API at `quay_url` (None: the default, quay.io)."""
    api_url = ["--quay-api-url", quay_url] if quay_url else []
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "containerdisks",
            "docs",
            "publish",
            *api_url,
            "--log-format",
            "json",
            *upstream.mirror_args(),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or clean_env(),
    )
    # Whatever happened, the token shows nowhere and no traceback reaches the user.
    assert TOKEN not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def pages(stdout: str) -> dict[str, str]:
    """Dry-run output: `<!-- quay.io/containerdisks/<name> -->` then that page's Markdown."""
    parts = re.split(r"^<!-- quay\.io/containerdisks/([a-z0-9-]+) -->\n", stdout, flags=re.M)
    assert "" == parts[0]
    return {
        name: body.removesuffix("\n") for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def test_dry_run_prints_every_page_and_sends_nothing(
    upstream: UpstreamServer, quay: FakeQuay, tmp_path: Path
) -> None:
    # A dry run never reads the token file: a missing one is fine.
    result = run(upstream, quay.url, "--quay-token-file", str(tmp_path / "absent"))
    assert 0 == result.returncode, result.stderr
    printed = pages(result.stdout)
    assert DOCS_REPOS == list(printed)
    assert [] == quay.requests
    assert printed["fedora"].startswith("# Fedora Containerdisk Images\n")
    # Fedora's newest stable release in the fixture releases.json is 40 (39, 40, 41 Beta).
    assert "| `40`, `latest` | x86_64, aarch64 | `fedora` |" in printed["fedora"]
    assert "image: quay.io/containerdisks/fedora:40\n" in printed["fedora"]
    assert 1 == upstream.count("https://getfedora.org/releases.json")


def test_publish_sends_each_description_then_visibility_in_catalog_order(
    upstream: UpstreamServer, quay: FakeQuay, token_file: Path
) -> None:
    expected = pages(run(upstream, quay.url).stdout)
    result = run(upstream, quay.url, "--dry-run=false", "--quay-token-file", str(token_file))
    assert 0 == result.returncode, result.stderr

    sent = [(r.method, r.path, r.json) for r in quay.requests]
    want = []
    for name in DOCS_REPOS:
        want.append(("PUT", api(name), {"description": expected[name]}))
        want.append(("POST", api(name) + "/changevisibility", {"visibility": "public"}))
    assert want == sent
    for r in quay.requests:
        assert (f"Bearer {TOKEN}", "application/json") == (
            r.headers["Authorization"],
            r.headers["Content-Type"],
        )
    assert {"public"} == {repo.visibility for repo in quay.repositories.values()}
    assert [f"quay.io/containerdisks/{n}  published" for n in DOCS_REPOS] == (
        result.stdout.splitlines()
    )


def test_focus_publishes_the_whole_page_of_one_repository(
    upstream: UpstreamServer, quay: FakeQuay, token_file: Path
) -> None:
    result = run(
        upstream,
        quay.url,
        "--dry-run=false",
        "--quay-token-file",
        str(token_file),
        "--focus",
        "almalinux:9",
    )
    assert 0 == result.returncode, result.stderr
    assert [("PUT", api("almalinux")), ("POST", api("almalinux") + "/changevisibility")] == [
        (r.method, r.path) for r in quay.requests
    ]
    description = quay.repositories[f"{ORG}/almalinux"].description
    assert "| `10` | x86_64, aarch64, s390x | `almalinux` |" in description
    assert "| `9` | x86_64, aarch64, s390x | `almalinux` |" in description
    assert "url:docker://quay.io/containerdisks/almalinux:10," in description
    assert 0 == upstream.count()  # no discovering source asked


def test_a_refused_token_fails_every_repository_with_quays_message(
    upstream: UpstreamServer, quay: FakeQuay, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    result = run(upstream, quay.url, "--dry-run=false", "--quay-token-file", str(wrong))
    assert 1 == result.returncode
    lines = result.stdout.splitlines()
    assert [
        f"quay.io/containerdisks/{n}  failed: PUT {api(n)}: HTTP 401 Unauthorized: "
        "Invalid bearer token format"
        for n in DOCS_REPOS
    ] == lines
    assert ["PUT"] * len(DOCS_REPOS) == [r.method for r in quay.requests]  # never made public
    assert "not-the-token" not in result.stdout + result.stderr


def test_one_failing_repository_does_not_stop_the_others(
    upstream: UpstreamServer, quay: FakeQuay, token_file: Path
) -> None:
    del quay.repositories[f"{ORG}/ubuntu"]  # unknown to Quay: 404
    quay.respond("POST", api("debian") + "/changevisibility", 403, body={"detail": "no admin"})
    result = run(upstream, quay.url, "--dry-run=false", "--quay-token-file", str(token_file))
    assert 1 == result.returncode
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    assert (
        f"failed: PUT {api('ubuntu')}: HTTP 404 Not Found: Not Found"
        == lines["quay.io/containerdisks/ubuntu"]
    )
    assert (
        f"failed: POST {api('debian')}/changevisibility: HTTP 403 Forbidden: no admin"
        == (lines["quay.io/containerdisks/debian"])
    )
    ok = [n for n in DOCS_REPOS if n not in ("ubuntu", "debian")]
    assert all("published" == lines[f"quay.io/containerdisks/{n}"] for n in ok)
    assert ["PUT"] == [r.method for r in quay.requests if r.path.startswith(api("ubuntu"))]
    assert "fedora" in [p.split("/")[-1] for p in (r.path for r in quay.requests)]
    assert '"event": "docs_failed"' in result.stderr


def test_a_5xx_is_retried_and_the_publish_completes(
    upstream: UpstreamServer, quay: FakeQuay, token_file: Path
) -> None:
    quay.respond("PUT", api("debian"), 500, times=1)
    result = run(
        upstream,
        quay.url,
        "--dry-run=false",
        "--quay-token-file",
        str(token_file),
        "--focus",
        "debian:13",
    )
    assert 0 == result.returncode, result.stderr
    assert ["PUT", "PUT", "POST"] == [r.method for r in quay.requests]
    assert quay.requests[0].json == quay.requests[1].json
    assert '"event": "quay_retry"' in result.stderr


def test_an_unreachable_quay_fails_with_one_line(
    upstream: UpstreamServer, token_file: Path
) -> None:
    port = free_port()
    result = run(
        upstream,
        f"http://127.0.0.1:{port}",
        "--dry-run=false",
        "--quay-token-file",
        str(token_file),
        "--focus",
        "debian:*",
        env=clean_env(CONTAINERDISKS_RETRIES="2"),
    )
    assert 1 == result.returncode
    assert (
        f"quay.io/containerdisks/debian  failed: PUT {api('debian')}: cannot connect to "
        f"http://127.0.0.1:{port}: [Errno 111] Connect call failed ('127.0.0.1', {port}) "
        "(after 2 attempts)\n"
    ) == result.stdout


def test_a_failed_discovery_fails_that_repository_only(
    upstream: UpstreamServer, quay: FakeQuay, token_file: Path
) -> None:
    upstream.respond("https://getfedora.org/releases.json", 404, times=None)
    result = run(upstream, quay.url, "--dry-run=false", "--quay-token-file", str(token_file))
    assert 1 == result.returncode
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines())
    assert lines["quay.io/containerdisks/fedora"].startswith(
        "failed: fedora:*: https://getfedora.org/releases.json: HTTP 404"
    )
    assert [] == [r for r in quay.requests if r.path.startswith(api("fedora"))]
    assert len(DOCS_REPOS) - 1 == len([v for v in lines.values() if v == "published"])


def test_no_stable_fedora_upstream_fails_fedora_only(
    upstream: UpstreamServer, quay: FakeQuay, tmp_path: Path
) -> None:
    releases = json.loads((FIXTURES_DIR / "fedora/releases.json").read_text())
    put(upstream.root, FEDORA, json.dumps([r for r in releases if "Beta" in r["version"]]))
    result = run(upstream, quay.url)
    assert 1 == result.returncode
    assert "fedora" not in pages(result.stdout)
    assert "fedora:*: upstream lists no stable version for the docs" in result.stderr
    assert [] == quay.requests


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dry-run=false"], "docs publish --dry-run=false needs --quay-token-file"),
        (
            ["--dry-run=false", "--quay-token-file", "/nonexistent/t"],
            "quay token file /nonexistent/t: No such file",
        ),
        (
            ["--registry", "quay.io"],
            "invalid flag --registry 'quay.io': expected quay.io/<organization>",
        ),
        (["--registry", "docker.io/containerdisks"], "this command only works with quay.io"),
        (["--focus", "cirros:6.1"], "focus 'cirros:6.1' matches no entry with docs"),
        (["--focus", "nope:*"], "focus 'nope:*' matches no catalog entry"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(
    upstream: UpstreamServer, quay: FakeQuay, args: list[str], message: str
) -> None:
    # The default Quay API (quay.io) is named, but nothing may reach it: every case fails first.
    result = run(upstream, None if "--registry" in args else quay.url, *args)
    assert 2 == result.returncode
    assert message in result.stderr
    assert 1 == len(result.stderr.strip().splitlines())
    assert [] == quay.requests


def test_an_empty_token_file_is_a_usage_error(
    upstream: UpstreamServer, quay: FakeQuay, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = run(upstream, quay.url, "--dry-run=false", "--quay-token-file", str(empty))
    assert 2 == result.returncode
    assert f"quay token file {empty} is empty" in result.stderr
    assert [] == quay.requests
