"""Nothing reachable: upstream hosts and the registry are closed loopback ports.

This is what the README's first command does on a machine without internet: one clear line per
failing source, exit 1, no traceback.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from containerdisks.catalog import load_catalog
from tests.support.cli import clean_env
from tests.support.upstream_server import FIXTURES_DIR, UpstreamServer, lay_out_upstream, put


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env["CONTAINERDISKS_RETRIES"] = "2"
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", *args, "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def test_unreachable_upstream_one_line_per_source_exit_1() -> None:
    port = closed_port()
    dead = f"http://127.0.0.1:{port}/"
    # Every upstream host (the whole default catalog) is the closed port.
    mirrors = ["--upstream-mirror", f"https://={dead}"]
    result = run("images", "push", "--source-registry", f"127.0.0.1:{closed_port()}/cd", *mirrors)
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    failures = {
        e["entry"]: e["error"]
        for e in events(result.stderr)
        if e["event"] in ("discovery_failed", "plan_failed")
    }
    expected = {b.item.label for b in load_catalog(None).items if not b.item.skip_unless_focused}
    assert expected == set(failures)
    assert str(failures["fedora:*"]).startswith(
        "https://getfedora.org/releases.json: cannot connect to 127.0.0.1"
    ), failures["fedora:*"]
    assert "https://cloud.centos.org/centos/9-stream/x86_64/images/CHECKSUM" in str(
        failures["centos-stream:9"]
    )
    assert all(isinstance(v, str) and "\n" not in v for v in failures.values())


def test_unreachable_registry_fails_each_entry_with_one_line(tmp_path: Path) -> None:
    root = lay_out_upstream(tmp_path / "up")
    port = closed_port()
    with UpstreamServer(root) as srv:
        result = run(
            "images",
            "push",
            "--focus",
            "centos-stream:9",
            "--source-registry",
            f"127.0.0.1:{port}/cd",
            *srv.mirror_args(),
        )
        image_requests = [p for p in srv.paths() if not p.endswith("CHECKSUM")]
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    failed = [e for e in events(result.stderr) if e["event"] == "plan_failed"]
    assert 1 == len(failed)
    assert str(failed[0]["error"]).startswith(
        f"cannot read published 127.0.0.1:{port}/cd/centos-stream:9:"
    )
    assert [] == image_requests


def test_malformed_upstream_metadata_fails_that_entry_only(tmp_path: Path, registry: Any) -> None:
    root = lay_out_upstream(tmp_path / "up")
    put(root, "https://getfedora.org/releases.json", '{"not": "a list"}')
    ubuntu = (FIXTURES_DIR / "ubuntu/SHA256SUM").read_text()
    for version in ("26.04", "25.04", "24.04", "20.04"):  # the fixture is 22.04's SHA256SUMS
        sums = f"https://cloud-images.ubuntu.com/releases/{version}/release/SHA256SUMS"
        put(root, sums, ubuntu.replace("22.04", version))
    with UpstreamServer(root) as srv:
        result = run(
            "images",
            "push",
            "--source-registry",
            f"{registry.host}/cd",
            "--results-file",
            str(tmp_path / "results.json"),
            *srv.mirror_args(),
        )
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    failed = {
        e["entry"]: e["error"]
        for e in events(result.stderr)
        if e["event"] in ("discovery_failed", "plan_failed")
    }
    assert ["fedora:*"] == list(failed)
    assert str(failed["fedora:*"]).startswith("https://getfedora.org/releases.json: malformed")
    # The plan, then (after a blank line) the failures: every entry is named once.
    rows = [line.split()[0] for line in result.stdout.splitlines()[1:] if line]
    assert result.stdout.splitlines()[-1].startswith("fedora:*  failed: https://getfedora.org/")
    everything = {b.item.label for b in load_catalog(None).items if not b.item.skip_unless_focused}
    assert everything == set(rows)
    assert not (tmp_path / "results.json").exists()  # a dry run writes nothing


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_ends_a_one_shot_run_with_its_status(sig: signal.Signals, status: int) -> None:
    # An upstream that accepts the connection and never answers holds the run mid-pass.
    with socket.socket() as hold:
        hold.bind(("127.0.0.1", 0))
        hold.listen()
        port = hold.getsockname()[1]
        env = clean_env()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "containerdisks",
                "images",
                "push",
                "--focus",
                "fedora:*",
                "--upstream-mirror",
                f"https://getfedora.org/=http://127.0.0.1:{port}/",
                "--log-format",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        conn, _ = hold.accept()  # the request has been sent: the run is waiting on upstream
        with conn:
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
    assert status == proc.returncode
    assert "Traceback" not in err
