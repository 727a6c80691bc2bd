"""One bad source fails only its own entries: `images push --dry-run=false` (and `serve --once`)
as a real process.

Fedora's releases.json is made hostile in ways that used to escape the source as exceptions
(deeply nested JSON: RecursionError; a NUL in a link; a 5000-digit version: `int()` refuses it
since Python 3.11), beside a healthy `checksum-file` entry served by the same loopback upstream.
The healthy entry is published into the real registry (read back with skopeo), the bad one is
one line on stdout and one `discovery_failed` event, the command exits 1, and no traceback is
printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import clean_env
from tests.support.disks import checksum_file_tree
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer, put

RELEASES = "https://getfedora.org/releases.json"
LINK = "https://download.example/pub/fedora/40/Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2"


def _item(**changes: str) -> dict[str, str]:
    item = {
        "version": "40",
        "arch": "x86_64",
        "link": LINK,
        "variant": "Cloud",
        "subvariant": "Cloud_Base",
        "sha256": "0" * 64,
    }
    return {**item, **changes}


HOSTILE = {
    "deeply-nested-json": "[" * 200_000 + "]" * 200_000,
    "nul-in-a-name": json.dumps([_item(link=LINK.replace(".x86_64", "\x00.x86_64"))]),
    "5000-digit-version": json.dumps([_item(version="9" * 5000)]),
}


def catalog(tmp_path: Path, healthy: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    fedora = {"name": "fedora", "arches": ["x86_64"], "source": {"kind": "fedora"}}
    path.write_text(yaml.safe_dump({"catalog": "replace", "entries": [fedora, healthy]}))
    return path


@pytest.mark.parametrize(
    ("case", "command"),
    [
        *((case, ("images", "push")) for case in HOSTILE),
        ("nul-in-a-name", ("serve", "--once")),  # the daemon's one-shot pass: the same code path
    ],
)
def test_a_hostile_releases_json_fails_fedora_only(
    tmp_path: Path, registry: Registry, case: str, command: tuple[str, str]
) -> None:
    root = tmp_path / "up"
    healthy = checksum_file_tree(root, "tiny")
    put(root, RELEASES, HOSTILE[case])
    with UpstreamServer(root) as srv:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "containerdisks",
                *command,
                "--dry-run=false",
                "--config",
                str(catalog(tmp_path, healthy)),
                "--source-registry",
                f"{registry.host}/cd",
                "--work-dir",
                str(tmp_path / "work"),
                "--results-file",
                str(tmp_path / "results.json"),
                "--log-format",
                "json",
                *srv.mirror_args(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(CONTAINERDISKS_RETRIES="1"),
            cwd=tmp_path,
        )
    assert 1 == result.returncode, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    # The healthy entry is published, as an independent client sees it.
    assert "1" in registry.list_tags("cd/tiny")
    # The bad one: one line on stdout, one event on stderr, the same words.
    rows = [line for line in result.stdout.splitlines() if line.startswith("fedora")]
    assert 1 == len(rows), result.stdout
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "discovery_failed"]
    assert ["fedora:*"] == [e["entry"] for e in failed]
    message = failed[0]["error"]
    assert message
    assert "\n" not in message
    assert "\x00" not in message
    assert rows[0].endswith(f"failed: {message}"), (rows, message)
    assert ["entries_failed"] == [e["event"] for e in events if e["event"] == "entries_failed"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"tiny:1", "fedora:*"} == set(results)
    assert "Err" in results["fedora:*"]
