"""Start-up: what `containerdisks --help`, `catalog` and a dry-run push import.

Each runs as a real process (`python -m containerdisks ...`); at exit the process writes the
top-level names in `sys.modules` to a file. `--help` is pinned against an allow-list, as the
difference from a bare interpreter running the same probe, so a new import on its path fails
here and must be added deliberately; `catalog` and a dry run must not load what only
publishing (isal, zstandard) or verifying (asyncssh, kubernetes_asyncio) needs, and neither
must a real push of an entry that is already up to date (the one-shot no-change pass), which
also loads neither prometheus-client, cryptography nor anyio. A publish without a signing key
loads no cryptography either.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import probed
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer

# `bare`: the interpreter and the probe alone; otherwise `python -m containerdisks ARGS`.
_PROBE = """
import atexit, gc, json, os, runpy, sys
def dump():
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump(sorted({m.partition(".")[0] for m in sys.modules}), f)
    with open(os.environ["PROBE_OUT"] + ".gc", "w") as f:
        json.dump([gc.isenabled(), gc.get_freeze_count()], f)
atexit.register(dump)
if sys.argv[1:] != ["bare"]:
    sys.argv = ["containerdisks", *sys.argv[1:]]
    runpy.run_module("containerdisks", run_name="__main__")
"""

# What `--help` may import beyond a bare interpreter: argparse and what it loads, and
# containerdisks.cli itself. Nothing of the commands, the settings, asyncio or aiohttp.
HELP_ALLOWED = {
    "containerdisks",
    "argparse",
    "typing",
    "__future__",
    # argparse's own imports (gettext, shutil and theirs; textwrap for the help text)
    "gettext",
    "locale",
    "shutil",
    "textwrap",
    "fnmatch",
    "errno",
    "bz2",
    "lzma",
    "zlib",
    "_bz2",
    "_lzma",
    "_compression",
    "_locale",
    "_typing",
    "copy",
    "re",
    "enum",
    "functools",
    "collections",
    "keyword",
    "operator",
    "reprlib",
    "types",
    "_sre",
    "_functools",
    "_collections",
    "_operator",
    "itertools",
    "copyreg",
    "weakref",
    "_weakrefset",
    "warnings",
    "contextlib",
}

# Loaded only by publishing (compressors) and verifying (SSH, Kubernetes).
NOT_FOR_PLANNING = {"isal", "zstandard", "asyncssh", "kubernetes_asyncio"}
# Not loaded by a one-shot pass (issue 21's no-change pass): prometheus-client (nothing serves
# /metrics), cryptography (no signing or verify key set), anyio (the scheduler's queue is on
# asyncio).
NOT_FOR_ONE_SHOT = {"prometheus_client", "cryptography", "anyio"}


def imported(tmp_path: Path, *args: str, cwd: Path | None = None) -> tuple[set[str], str]:
    """Top-level modules of `python -m containerdisks ARGS` at exit, and its stdout."""
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    stdout = probed(_PROBE, out, *args, cwd=cwd or tmp_path)
    return set(json.loads(out.read_text())), stdout


def test_help_imports_only_the_allowed_modules(tmp_path: Path) -> None:
    bare, _ = imported(tmp_path, "bare")
    for argv in (["--help"], ["images", "push", "--help"], ["--version"]):
        modules, stdout = imported(tmp_path, *argv)
        extra = modules - bare
        assert "containerdisks" in stdout
        assert {"containerdisks", "argparse"} <= extra  # the probe did run the command line
        assert set() == extra - HELP_ALLOWED, argv


def test_catalog_imports_no_network_nor_compressor(tmp_path: Path) -> None:
    modules, stdout = imported(tmp_path, "catalog", "--output", "json")
    assert "fedora" in stdout
    assert {"containerdisks", "pydantic", "yaml"} <= modules
    assert set() == modules & (NOT_FOR_PLANNING | {"aiohttp", "prometheus_client"})


def test_dry_run_push_imports_no_compressor_nor_verifier(
    tmp_path: Path, registry: Registry, fedora: tuple[UpstreamServer, dict[tuple[str, str], bytes]]
) -> None:
    srv, _ = fedora
    modules, stdout = imported(
        tmp_path,
        "images",
        "push",
        "--focus",
        "fedora:*",
        "--source-registry",
        f"{registry.host}/cd",
        "--log-format",
        "json",
        *srv.mirror_args(),
    )
    assert "build" in stdout  # it planned against the upstream and the registry
    assert {"aiohttp", "containerdisks"} <= modules
    assert set() == modules & (NOT_FOR_PLANNING | NOT_FOR_ONE_SHOT)
    publish = [
        "images",
        "push",
        "--dry-run=false",
        "--focus",
        "fedora:40",
        "--source-registry",
        f"{registry.host}/cd",
        "--log-format",
        "json",
        "--work-dir",
        str(tmp_path / "work"),
        *srv.mirror_args(),
    ]
    with_publish, _ = imported(tmp_path, *publish)
    # The probe sees them when they are used: publishing loads the compressors, and without a
    # signing key no cryptography (signing.py imports it where keys are handled).
    assert {"isal", "zstandard"} <= with_publish
    assert "cryptography" not in with_publish
    # The same push again has nothing to do (issue 21's no-change pass): it plans, and loads
    # neither the publisher's compressors nor a verifier.
    unchanged, stdout = imported(tmp_path, *publish)
    assert "up-to-date" in stdout
    assert "build" not in stdout
    assert set() == unchanged & (NOT_FOR_PLANNING | NOT_FOR_ONE_SHOT)
    # The collector was off during start-up and on again once the command waited, start-up's
    # objects frozen (cli.py's docstring).
    enabled, frozen = json.loads(max(tmp_path.glob("modules-*.json.gc"), key=_n).read_text())
    assert enabled
    assert frozen > 10_000


def _n(p: Path) -> int:
    return int(p.name.split("-")[1].split(".")[0])
