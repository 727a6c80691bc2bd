"""`images push` (dry run) as a subprocess, planning against the real registry.

"Published" state is put into a real Debian `docker-registry` by skopeo from layouts the test
writes by hand (tests/support/images.py), never by our code. Upstream is the local server serving
the real fixture files, reached through `--upstream-mirror`. Each scenario is its own repository,
all sharing CentOS Stream 9's three CHECKSUM files, so the test also shows that a pass reads each
metadata URL once and downloads no image.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.images import ArchImage, skopeo_push, write_layout
from tests.support.upstream_server import FIXTURES_DIR, UpstreamServer, lay_out_upstream

CENTOS = "https://cloud.centos.org/centos/9-stream/{arch}/images/"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x"}
ENV = [
    "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium",
    "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=centos.stream9",
]


def fixture_pick(arch: str) -> tuple[str, str]:
    """(file, sha256) of the image medius picks: read from the fixture by a route independent
    of the code under test (the last GenericCloud qcow2 name in byte order)."""
    text = (FIXTURES_DIR / f"centos-stream/centos-stream9-{arch}.checksum").read_text()
    found = re.findall(
        rf"^SHA256 \((CentOS-Stream-GenericCloud-9-[^)]*\.{arch}\.qcow2)\) = ([0-9a-f]{{64}})$",
        text,
        flags=re.MULTILINE,
    )
    return max(found)


def entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": "9",
        "arches": list(ARCHES),
        "instancetype": "u1.medium",
        "preference": "centos.stream9",
        "source": {
            "kind": "checksum-file",
            "url": "https://cloud.centos.org/centos/{version}-stream/{arch}/images/CHECKSUM",
            "format": "bsd",
            "match": r"CentOS-Stream-GenericCloud-{version}-(?P<tag>.+)\.{arch}\.qcow2",
            "unique_tag": "{version}-{tag}",
        },
    }


SCENARIOS = ["current", "changed", "norepo", "notag", "noarch", "retag", "envchanged"]


def published(arch: str, *, shasum: str | None = None, env: list[str] | None = None) -> ArchImage:
    file, sha = fixture_pick(arch)
    return ArchImage(
        ARCHES[arch], shasum or sha, CENTOS.format(arch=arch) + file, ENV if env is None else env
    )


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamServer]:
    root = lay_out_upstream(tmp_path / "upstream")
    with UpstreamServer(root) as srv:
        yield srv


def run_push(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def test_plan_against_real_registry(
    tmp_path: Path, registry: Any, upstream: UpstreamServer
) -> None:
    ns = f"{registry.host}/cd"
    all3 = list(ARCHES)
    layouts = {
        "current": [published(a) for a in all3],
        "changed": [published(a, shasum="0" * 64 if a == "aarch64" else None) for a in all3],
        "notag": [published(a) for a in all3],
        "noarch": [published(a) for a in ("x86_64", "aarch64")],
        "retag": [published(a) for a in all3],
        "envchanged": [published(a, env=[ENV[0]]) for a in all3],
    }
    x86_tag = "9-" + fixture_pick("x86_64")[0].removeprefix(
        "CentOS-Stream-GenericCloud-9-"
    ).removesuffix(".x86_64.qcow2")
    for name, images in layouts.items():
        layout = tmp_path / f"layout-{name}"
        tag = "other" if name == "notag" else "9"
        write_layout(layout, tag, images, index=True)
        extra = () if name in ("retag", "notag") else (x86_tag,)
        skopeo_push(layout, tag, f"{ns}/{name}", extra_tags=extra)
    # "retag": the unique tag exists but points at something else.
    stale = tmp_path / "layout-stale"
    write_layout(stale, x86_tag, [published("x86_64", shasum="1" * 64)], index=False)
    skopeo_push(stale, x86_tag, f"{ns}/retag")

    config = tmp_path / "catalog.yaml"
    config.write_text(yaml.safe_dump({"entries": [entry(n) for n in SCENARIOS]}))
    result = run_push(
        "images",
        "push",
        "--config",
        str(config),
        "--source-registry",
        ns,
        "--output",
        "json",
        *upstream.mirror_args(),
    )
    assert 0 == result.returncode, result.stderr
    plan = {e["entry"]: e for e in json.loads(result.stdout)["entries"]}

    def actions(name: str) -> dict[str, str]:
        return {a["arch"]: a["action"] for a in plan[f"{name}:9"]["arches"]}

    assert {"x86_64": "up-to-date", "aarch64": "up-to-date", "s390x": "up-to-date"} == actions(
        "current"
    )
    assert {"x86_64": "reuse", "aarch64": "build", "s390x": "reuse"} == actions("changed")
    assert {"x86_64": "build", "aarch64": "build", "s390x": "build"} == actions("norepo")
    assert {"repository unknown"} == {a["reason"] for a in plan["norepo:9"]["arches"]}
    assert {"tag unknown"} == {a["reason"] for a in plan["notag:9"]["arches"]}
    assert {"x86_64": "reuse", "aarch64": "reuse", "s390x": "build"} == actions("noarch")
    assert "arch missing" == plan["noarch:9"]["arches"][2]["reason"]
    assert {"x86_64": "retag", "aarch64": "retag", "s390x": "retag"} == actions("retag")
    assert {"build"} == set(actions("envchanged").values())
    assert [x86_tag, "9"] == plan["current:9"]["tags"]
    upstream_sums = {a["arch"]: a["upstream"] for a in plan["changed:9"]["arches"]}
    assert {a: fixture_pick(a)[1] for a in ARCHES} == upstream_sums
    assert "0" * 64 == plan["changed:9"]["arches"][1]["published"]

    # One request per CHECKSUM file for the whole pass; no image requested.
    paths = upstream.paths()
    assert sorted(
        f"/cloud.centos.org/centos/9-stream/{a}/images/CHECKSUM" for a in ARCHES
    ) == sorted(paths)


def test_table_output_and_failures_do_not_stop_the_others(
    tmp_path: Path, registry: Any, upstream: UpstreamServer
) -> None:
    ns = f"{registry.host}/cd"
    config = tmp_path / "catalog.yaml"
    broken = entry("broken")
    broken["source"]["url"] = "https://cloud.centos.org/centos/{version}-stream/{arch}/images/NOPE"
    config.write_text(yaml.safe_dump({"entries": [entry("fine"), broken]}))
    result = run_push(
        "images", "push", "--config", str(config), "--source-registry", ns, *upstream.mirror_args()
    )
    assert 1 == result.returncode
    lines = result.stdout.splitlines()
    assert ["ENTRY", "ARCH", "UPSTREAM", "PUBLISHED", "ACTION"] == lines[0].split()
    fine = [line.split() for line in lines if line.startswith("fine:9")]
    assert [["fine:9", a, fixture_pick(a)[1][:12], "-", "build"] for a in ARCHES] == fine
    failed = [line for line in lines if line.startswith("broken:9")]
    assert 3 == len(failed)
    assert all("failed:" in line and "images/NOPE: HTTP 404" in line for line in failed)
    assert "Traceback" not in result.stderr
    no_fail = run_push(
        "images",
        "push",
        "--config",
        str(config),
        "--source-registry",
        ns,
        "--no-fail",
        *upstream.mirror_args(),
    )
    assert 0 == no_fail.returncode
