"""`containerdisks catalog`: the catalog in effect, listed without touching the network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import containerdisks.log
from containerdisks.cli import main
from tests.support.cli import clean_env


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def entries(*args: str) -> dict[str, dict[str, Any]]:
    result = run("catalog", "--output", "json", *args)
    assert 0 == result.returncode, result.stderr
    return {e["entry"]: e for e in json.loads(result.stdout)["entries"]}


def test_json_lists_every_entry_with_its_policy() -> None:
    listed = entries()
    assert 19 == len(listed)  # 18 fixed entries (cirros included) and Fedora
    assert "cirros:6.1" in listed
    assert listed["cirros:6.1"]["skip_unless_focused"]

    debian = listed["debian:13"]
    assert [
        "13-<YYMMDDhhmm>",
        "13-<cloud.debian.org/version label>",
        "13",
        "latest",
    ] == debian["tags"]
    assert (True, True, "debian", "debian") == (
        debian["latest"],
        debian["docs"],
        debian["user"],
        debian["source"]["kind"],
    )
    assert {
        "x86_64": [
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium",
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=debian",
        ]
    } == {k: v for k, v in debian["env"].items() if k == "x86_64"}

    centos = listed["centos-stream:9"]
    assert ["9-<YYMMDDhhmm>", "9-{tag}", "9"] == centos["tags"]
    assert (
        "CentOS-Stream-GenericCloud-{version}-(?P<tag>.+)\\.{arch}\\.qcow2"
        == (centos["source"]["match"])
    )
    assert {} == centos["per_arch"]

    assert ["16.0.0-<YYMMDDhhmm>", "16.0.0"] == listed["opensuse-microos:16.0.0"]["tags"]
    assert "root" == listed["opensuse-microos:16.0.0"]["user"]
    tumbleweed = listed["opensuse-tumbleweed:1.0.0"]
    assert {"s390x": {"url", "match"}} == {a: set(d) for a, d in tumbleweed["per_arch"].items()}
    assert "zsystems" in tumbleweed["per_arch"]["s390x"]["url"]
    leap = listed["opensuse-leap:16.0"]
    assert ("sles", ["x86_64", "aarch64", "s390x"]) == (leap["user"], leap["arches"])

    cirros = listed["cirros:6.1"]
    assert ({"x86_64": [], "aarch64": []}, None) == (cirros["env"], cirros["user"])
    assert "db9420c4" == cirros["per_arch"]["aarch64"]["checksum"][:8]


def test_fedora_is_listed_as_a_discovering_source() -> None:
    fedora = entries("--focus", "fedora:*")["fedora:*"]
    assert (None, "discovered upstream") == (fedora["version"], fedora["versions"])
    assert "the newest stable version" == fedora["latest_and_docs_for"]
    assert ["<version>-<YYMMDDhhmm>", "<version>-<compose>", "<version>", "latest"] == (
        fedora["tags"]
    )
    assert ["40/s390x"] == fedora["source"]["exclude"]
    assert 38 == fedora["source"]["min_version"]
    assert any("CHECKSUM file" in rule for rule in fedora["source"]["rules"])
    assert "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora.s390x" in fedora["env"]["s390x"]
    assert {"x86_64": True, "aarch64": True, "s390x": False} == fedora["secure_boot"]
    assert fedora["guest_agent"]
    # A version focus cannot be checked without asking upstream: the item is listed.
    assert ["fedora:*"] == list(entries("--focus", "fedora:99"))


def test_table_lists_entries_with_details() -> None:
    result = run("catalog")
    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ENTRY", "ARCHES", "SOURCE", "USER", "NOTES"]
    rows = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert 20 == len(rows)  # the header and 19 entries
    assert "almalinux:10" == rows[1]
    assert "fedora:*" == rows[-1]
    (cirros,) = (line for line in lines if line.startswith("cirros:6.1"))
    assert "test-only" in cirros
    (fedora,) = (line for line in lines if line.startswith("fedora:*"))
    assert "versions discovered upstream" in fedora
    assert "latest+docs on newest stable" in fedora
    assert any(line.split() == ["tags", "13-<YYMMDDhhmm>,", "13-<cloud.debian.org/version",
                                "label>,", "13,", "latest"] for line in lines)  # fmt: skip
    assert any("s390x url" in line and "zsystems" in line for line in lines)


def test_focus_narrows_and_a_focus_matching_nothing_is_exit_2() -> None:
    assert ["debian:11", "debian:12", "debian:13"] == list(entries("--focus", "debian:*"))
    assert ["cirros:6.1"] == list(entries("--focus", "cirros:6.1"))
    for focus in ("centos-stream:8", "nothing:*"):
        result = run("catalog", "--focus", focus)
        assert 2 == result.returncode
        assert f"containerdisks: focus '{focus}' matches no catalog entry\n" == result.stderr
        assert "" == result.stdout


def test_a_config_file_replaces_the_catalog(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "entries": [
                    {
                        "name": "mine",
                        "version": "1",
                        "arches": ["s390x"],
                        "user": "me",
                        "source": {
                            "kind": "checksum-file",
                            "url": "https://example.org/{arch}/SUMS",
                            "format": "gnu",
                            "match": r"disk-(?P<tag>\d+)\.qcow2",
                            "unique_tag": "{version}.{tag}",
                        },
                    }
                ]
            }
        )
    )
    listed = entries("--config", str(config))
    assert ["mine:1"] == list(listed)
    assert ["1-<YYMMDDhhmm>", "1.{tag}", "1"] == listed["mine:1"]["tags"]
    assert {"s390x": []} == listed["mine:1"]["env"]


def test_no_network_at_all(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process, with every way out of the machine closed: the command still answers."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for key in [k for k in os.environ if k.startswith("CONTAINERDISKS_")]:
        monkeypatch.delenv(key)
    # Logging stays as the test session configured it (main() would point it at capsys).
    monkeypatch.setattr(containerdisks.log, "configure", lambda *args, **kwargs: None)
    assert 0 == main(["catalog", "--output", "json", "--log-format", "json"])
    assert 19 == len(json.loads(capsys.readouterr().out)["entries"])
