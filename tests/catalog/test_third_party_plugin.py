"""A third-party source, installed from a directory with pip, planned and published unchanged.

Adding a distribution needs a catalog entry or a small plugin package, never a change to the
core. Here a plugin package is written into a temp dir (a pyproject with an entry point in the
`containerdisks.plugins` group and a `Source` subclass importing only `containerdisks.api`),
installed with pip, and used by the real command line: `catalog`, a dry run, and a publish into
an `oci:` layout read back by skopeo.

Decisions that shaped it:
- The package carries its own few-line PEP 517 backend (`backend-path`), so building it needs
  nothing but pip and the standard library (the venv has no `wheel` package, and CI installs
  from a package registry only).
- It is installed with `pip install --target` into the test's temp dir and reaches the
  subprocesses through PYTHONPATH, not into the shared venv: other test runs on the same venv
  (which enumerate the registered plugins) never see it, and nothing is left behind if the test
  is killed. Entry points are found the same way (`importlib.metadata` reads every path entry).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.cli import clean_env
from tests.support.disks import make_qcow2, sha256
from tests.support.upstream_server import UpstreamServer, put

PYPROJECT = """\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "containerdisks-example"
version = "1.0"

[project.entry-points."containerdisks.plugins"]
listing = "containerdisks_example:ListingSource"
"""

# A minimal PEP 517 backend: a pure-Python wheel of the package, entry points from pyproject.
BACKEND = '''\
"""Builds the example plugin's wheel with the standard library only."""

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path


def _record(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    name, version = project["name"].replace("-", "_"), project["version"]
    dist = f"{name}-{version}.dist-info"
    files = {str(p): p.read_bytes() for p in sorted(Path("containerdisks_example").rglob("*.py"))}
    groups = project.get("entry-points", {})
    entry_points = "".join(
        f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in eps.items())
        for group, eps in groups.items()
    )
    files[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\\nName: {project['name']}\\nVersion: {version}\\n"
    ).encode()
    files[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\\nGenerator: example\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    files[f"{dist}/entry_points.txt"] = entry_points.encode()
    record = [_record(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel
'''

PLUGIN = '''\
"""An example third-party source: images listed in a JSON index beside them.

The index is `{"build": "<id>", "images": {"<arch>": {"file": ..., "sha256": ...}}}`.
"""

from typing import Any, ClassVar

from containerdisks.api import (
    ArchError,
    Artifact,
    DiscoveryRequest,
    Release,
    Source,
    SourceError,
    SourceParams,
    Upstream,
    render,
)


class ListingParams(SourceParams):
    index: str


class ListingSource(Source):
    kind: ClassVar[str] = "listing"
    Params: ClassVar[type[SourceParams]] = ListingParams

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        assert request.version is not None
        found: list[Artifact | ArchError] = []
        for arch in request.arches:
            params = request.params[arch]
            assert isinstance(params, ListingParams)
            url = render(params.index, request.context(arch).values())
            try:
                index: Any = await upstream.get_json(url)
            except SourceError as e:
                found.append(ArchError(arch, str(e)))
                continue
            image = index.get("images", {}).get(arch)
            if image is None:
                found.append(ArchError(arch, f"{url}: no image for {arch}"))
                continue
            found.append(
                Artifact(
                    arch=arch,
                    url=url.rsplit("/", 1)[0] + "/" + image["file"],
                    checksum=image["sha256"],
                    unique_tags=(f"{request.version}-{index['build']}",),
                )
            )
        return [Release(version=request.version, artifacts=tuple(found))]

    def describe(self, request: DiscoveryRequest) -> dict[str, Any]:
        return {**super().describe(request), "unique_tag": "{version}-<build>"}
'''

INDEX = "https://images.example.org/example/{version}/index.json"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin package, pip-installed from its directory into a site dir."""
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "containerdisks-example"
    (pkg / "containerdisks_example").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "backend.py").write_text(BACKEND)
    (pkg / "containerdisks_example" / "__init__.py").write_text(PLUGIN)
    site = root / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == result.returncode, result.stderr
    assert (site / "containerdisks_example-1.0.dist-info" / "entry_points.txt").is_file()
    return site


def run(
    *args: str, site: Path | None, cwd: Path, srv: UpstreamServer | None = None
) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "containerdisks",
            *args,
            "--log-format",
            "json",
            *(srv.mirror_args() if srv else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_a_plugin_package_needs_no_change_to_the_core(tmp_path: Path, plugin_site: Path) -> None:
    disks = {
        arch: make_qcow2(tmp_path / f"{arch}.qcow2", f"example-{arch}", size_mib=1, data_kib=64)
        for arch in ("x86_64", "aarch64")
    }
    up = tmp_path / "up"
    base = INDEX.format(version="7").rsplit("/", 1)[0]
    images = {}
    for arch, data in disks.items():
        put(up, f"{base}/example-7-{arch}.qcow2", data)
        images[arch] = {"file": f"example-7-{arch}.qcow2", "sha256": sha256(data)}
    put(up, INDEX.format(version="7"), json.dumps({"build": "b42", "images": images}))
    config = tmp_path / "catalog.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "entries": [
                    {
                        "name": "example",
                        "version": "7",
                        "arches": ["x86_64", "aarch64"],
                        "preference": "example",
                        "source": {"kind": "listing", "index": INDEX},
                    }
                ]
            }
        )
    )
    out = tmp_path / "out"
    common = ["--config", str(config), "--source-registry", f"oci:{out}"]

    # Without the package the kind is unknown: a configuration error, exit 2.
    missing = run("catalog", "--config", str(config), site=None, cwd=tmp_path)
    assert 2 == missing.returncode
    assert "unknown source kind 'listing'" in missing.stderr

    listed = run(
        "catalog", "--config", str(config), "--output", "json", site=plugin_site, cwd=tmp_path
    )
    assert 0 == listed.returncode, listed.stderr
    (entry,) = json.loads(listed.stdout)["entries"]
    assert ("listing", INDEX) == (entry["source"]["kind"], entry["source"]["index"])
    assert ["7-<YYMMDDhhmm>", "7-<build>", "7"] == entry["tags"]

    with UpstreamServer(up) as srv:
        with_plugin = functools.partial(run, site=plugin_site, cwd=tmp_path, srv=srv)
        plan = with_plugin("images", "push", *common, "--output", "json")
        assert 0 == plan.returncode, plan.stderr
        (planned,) = json.loads(plan.stdout)["entries"]
        assert ("example:7", ["7-b42", "7"]) == (planned["entry"], planned["tags"])
        expected = [(arch, "build", sha256(data)) for arch, data in disks.items()]
        assert expected == [(a["arch"], a["action"], a["upstream"]) for a in planned["arches"]]
        assert not out.exists()  # a dry run writes nothing

        published = with_plugin("images", "push", "--dry-run=false", *common)
        assert 0 == published.returncode, published.stderr
        assert 2 == len([p for p in srv.paths() if p.endswith(".qcow2")])

    results = json.loads((tmp_path / "results.json").read_text())
    assert ["example:7-b42", "example:7"] == results["example:7"]["Tags"][1:]
    index = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{out}/example:7-b42"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    assert ["amd64", "arm64"] == [m["platform"]["architecture"] for m in index["manifests"]]
    for goarch, arch in (("amd64", "x86_64"), ("arm64", "aarch64")):
        config_doc = json.loads(
            subprocess.run(
                [
                    "skopeo",
                    "inspect",
                    "--config",
                    "--override-arch",
                    goarch,
                    f"oci:{out}/example:7",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )
        assert sha256(disks[arch]) == config_doc["config"]["Labels"]["shasum"]
        assert ["INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=example"] == config_doc["config"][
            "Env"
        ]
