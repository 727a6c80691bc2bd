"""Bad upstream data fails that entry with one line naming the URL and the reason; the rest go on.

The whole default catalog is planned (`images push`, a dry run, as a subprocess) against the
loopback upstream serving the real fixture files, with several sources broken at once in
different ways: a malformed file, no matching candidate, a missing arch, an HTTP error, and
Fedora's missing checksum. Each broken entry fails with its one-line reason; every other entry
and arch is planned (`build`: nothing is published in the empty oci: source).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from containerdisks.catalog import load_catalog
from tests.support.cli import clean_env
from tests.support.upstream_server import (
    DEFAULT_FIXTURES,
    FIXTURES_DIR,
    UpstreamServer,
    lay_out_upstream,
    put,
    tree_path,
    via,
)

UBUNTU_SUMS = "https://cloud-images.ubuntu.com/releases/{}/release/SHA256SUMS"
RELEASES = "https://getfedora.org/releases.json"
DEB = "https://cloud.debian.org/images/cloud/{}/latest/debian-{}-genericcloud-{}.json"
CS = "https://cloud.centos.org/centos/{}-stream/{}/images/CHECKSUM"
ALMA = "https://repo.almalinux.org/almalinux/{}/cloud/{}/images/CHECKSUM"
LEAP = "https://download.opensuse.org/distribution/leap/{v}/appliances/"
TW_Z = "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/SHA256SUMS"
F40 = (
    "https://download.fedoraproject.org/pub/fedora/linux/releases/40/Cloud/x86_64/images/"
    "Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2"
)

Breaker = Callable[[Path, UpstreamServer], None]


def body(text: str, url: str) -> Breaker:
    return lambda root, _: put(root, url, text)  # type: ignore[func-returns-value]


def gone(url: str) -> Breaker:
    return lambda root, _: tree_path(root, url).unlink()


def failing(status: int, url: str) -> Breaker:
    return lambda _, srv: srv.respond(url, status, times=None)


def edited(url: str, change: Callable[[str], str]) -> Breaker:
    def apply(root: Path, _: UpstreamServer) -> None:
        path = tree_path(root, url)
        path.write_text(change(path.read_text()))

    return apply


def debian_json(url: str, change: Callable[[dict[str, Any]], None]) -> Breaker:
    def apply(root: Path, _: UpstreamServer) -> None:
        path = tree_path(root, url)
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))

    return apply


def _qcow2(doc: dict[str, Any]) -> dict[str, Any]:
    label = "upload.cloud.debian.org/image-format"
    return next(i for i in doc["items"] if i["metadata"]["labels"].get(label) == "qcow2")


def _no_qcow2(doc: dict[str, Any]) -> None:
    doc["items"].remove(_qcow2(doc))


def _bad_digest(doc: dict[str, Any]) -> None:
    _qcow2(doc)["metadata"]["annotations"]["cloud.debian.org/digest"] = "sha512:@@@"


def _no_f40_sha(text: str) -> str:
    items = json.loads(text)
    for item in items:
        if item["link"] == F40:
            item["sha256"] = ""
    return json.dumps(items)


def _drop_lines(needle: str) -> Callable[[str], str]:
    return lambda text: "".join(line for line in text.splitlines(True) if needle not in line)


D11_AMD = DEB.format("bullseye", "11", "amd64")
D12_ARM = DEB.format("bookworm", "12", "arm64")
D12_AMD = DEB.format("bookworm", "12", "amd64")
D13_ARM = DEB.format("trixie", "13", "arm64")
D13_AMD = DEB.format("trixie", "13", "amd64")
LEAP155_ARM = LEAP.format(v="15.5") + "openSUSE-Leap-15.5-Minimal-VM.aarch64-Cloud.qcow2.sha256"
GAVE_UP = "(gave up after 2 attempts)"
F40_SUMS = F40.rsplit("/", 1)[0] + "/Fedora-Cloud-40-1.14-x86_64-CHECKSUM"


SCENARIOS = {
    "one-of-each": (
        [
            body("<html>moved</html>", D11_AMD),
            gone(D12_ARM),
            failing(503, D13_ARM),
            body("<!DOCTYPE html><p>Not here</p>", ALMA.format("9", "s390x")),
            edited(UBUNTU_SUMS.format("24.04"), _drop_lines("cloudimg-s390x.img")),
            gone(LEAP155_ARM),
            failing(503, CS.format("10", "x86_64")),
            body('{"not": "a list"}', RELEASES),
        ],
        {
            "debian:11": f"x86_64: {D11_AMD}: malformed JSON: Expecting value at line 1",
            "debian:12": f"aarch64: {D12_ARM}: HTTP 404 Not Found{via(D12_ARM)}",
            "debian:13": f"aarch64: {D13_ARM}: HTTP 503 Service Unavailable {GAVE_UP}"
            + via(D13_ARM),
            "almalinux:9": f"s390x: {ALMA.format('9', 's390x')}: malformed checksum file: "
            "no GNU checksum line found",
            "ubuntu:24.04": f"s390x: {UBUNTU_SUMS.format('24.04')}: no file name matches "
            "'ubuntu-24\\.04-server-cloudimg-s390x\\.img'",
            "opensuse-leap:15.5": f"aarch64: {LEAP155_ARM}: HTTP 404 Not Found{via(LEAP155_ARM)}",
            "centos-stream:10": f"x86_64: {CS.format('10', 'x86_64')}: HTTP 503 Service "
            f"Unavailable {GAVE_UP}{via(CS.format('10', 'x86_64'))}",
            "fedora:*": f"{RELEASES}: malformed releases.json: expected an array, got an object",
        },
    ),
    "more-bad-data-and-fedora-missing-checksum": (
        [
            debian_json(D13_AMD, _no_qcow2),
            debian_json(D12_AMD, _bad_digest),
            edited(TW_Z, _drop_lines("openSUSE-MicroOS.s390x-16.0.0-s390x-Cloud-Snapshot")),
            edited(RELEASES, _no_f40_sha),
        ],
        {
            "debian:13": f"x86_64: {D13_AMD}: no item labelled "
            "upload.cloud.debian.org/image-format=qcow2",
            "debian:12": f"x86_64: {D12_AMD}: digest 'sha512:@@@' is not valid base64",
            "opensuse-microos:16.0.0": f"s390x: {TW_Z}: no file name matches "
            "'openSUSE-MicroOS\\.s390x-16\\.0\\.0-s390x-Cloud-Snapshot\\d+\\.qcow2'",
            # Never publish unverified bytes: no sha256 and no CHECKSUM file -> fedora:40 waits.
            "fedora:40": f"x86_64: no verifiable sha256 for x86_64 image {F40}: releases.json has "
            f"none and {F40_SUMS}: HTTP 404 Not Found{via(F40_SUMS)}",
        },
    ),
    "fedora-http-error": (
        [failing(500, RELEASES)],
        {"fedora:*": f"{RELEASES}: HTTP 500 Internal Server Error {GAVE_UP}{via(RELEASES)}"},
    ),
}


def everything() -> set[str]:
    labels = {
        b.item.label
        for b in load_catalog(None, signatures=False).items
        if not b.item.skip_unless_focused
    }
    return (labels - {"fedora:*"}) | {"fedora:40", "fedora:39", "fedora:41-beta"}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_bad_upstream_fails_that_entry_only(tmp_path: Path, scenario: str) -> None:
    breakers, expected = SCENARIOS[scenario]
    root = lay_out_upstream(tmp_path / "up", DEFAULT_FIXTURES)
    ubuntu = (FIXTURES_DIR / "ubuntu/SHA256SUM").read_text()
    for version in ("26.04", "25.04", "24.04", "20.04"):  # the fixture is 22.04's
        put(root, UBUNTU_SUMS.format(version), ubuntu.replace("22.04", version))
    env = clean_env()
    env["CONTAINERDISKS_RETRIES"] = "2"
    with UpstreamServer(root) as srv:
        for brk in breakers:
            brk(root, srv)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "containerdisks",
                "images",
                "push",
                "--source-registry",
                f"oci:{tmp_path / 'published'}",
                "--output",
                "json",
                "--log-format",
                "json",
                *srv.mirror_args(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        images = [p for p in srv.paths() if p.endswith((".qcow2", ".img"))]
        expected = {k: srv.resolve_notes(v) for k, v in expected.items()}
    assert 1 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    assert [] == images  # a dry run downloads no image
    plans = {p["entry"]: p for p in json.loads(result.stdout)["entries"]}
    failed = {k: p["error"] for k, p in plans.items() if p["error"]}
    assert expected == failed
    assert all("\n" not in message for message in failed.values())
    # Every other entry goes on: planned for every arch.
    entries = everything()
    if "fedora:*" in expected:  # discovery failed: no Fedora versions, one failure
        entries = {k for k in entries if not k.startswith("fedora:")} | {"fedora:*"}
    assert entries == set(plans)
    others = entries - set(expected)
    assert {k: ["build"] * len(plans[k]["arches"]) for k in others} == {
        k: [a["action"] for a in plans[k]["arches"]] for k in others
    }
    # One log event per failing entry, with the same line.
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    logged = {
        e["entry"]: e["error"] for e in events if e["event"] in ("discovery_failed", "plan_failed")
    }
    assert expected == logged
