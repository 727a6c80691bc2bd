"""Nothing reachable: upstream hosts and the registry are closed loopback ports.

This is what the README's first command does on a machine without internet: one clear line per
failing source, exit 1, no traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.upstream_server import UpstreamServer, lay_out_upstream


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERDISKS_")}
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
    mirrors = [
        "--upstream-mirror",
        f"https://getfedora.org/={dead}",
        "--upstream-mirror",
        f"https://cloud.centos.org/={dead}",
    ]
    result = run("images", "push", "--source-registry", f"127.0.0.1:{closed_port()}/cd", *mirrors)
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    failures = {
        e["entry"]: e["error"]
        for e in events(result.stderr)
        if e["event"] in ("discovery_failed", "plan_failed")
    }
    assert {"fedora:*", "centos-stream:9", "centos-stream:10"} == set(failures)
    assert str(failures["fedora:*"]).startswith(
        "https://getfedora.org/releases.json: cannot connect to 127.0.0.1"
    )
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
