"""Running the `containerdisks` CLI as a real subprocess in tests, with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.upstream_server import UpstreamServer

#: The setting that makes every catalog entry `signature: none` (see `clean_env`).
UNSIGNED = ("CONTAINERDISKS_UPSTREAM_SIGNATURES", "false")


def default_focus(flags: Sequence[str]) -> list[str]:
    """`--focus fedora:*` unless `flags` give a focus of their own: `--focus` values add up (a
    union), so a test's own focus must replace the helper's, not widen it."""
    given = any(f == "--focus" or f.startswith("--focus=") for f in flags)
    return [] if given else ["--focus", "fedora:*"]


def command(
    srv: UpstreamServer, target: str, *extra: str, cwd: Path, via: str | None = None
) -> list[str]:
    """`images push --dry-run=false --focus fedora:*` (unless `extra` focuses) into `target`,
    upstream mirrored to `srv` (or to `via`, e.g. a fault proxy in front of it)."""
    mirrors = ["--upstream-mirror", f"https://={via}/"] if via else srv.mirror_args()
    return [
        sys.executable,
        "-m",
        "containerdisks",
        "images",
        "push",
        "--dry-run=false",
        *default_focus(extra),
        "--source-registry",
        target,
        "--log-format",
        "json",
        "--work-dir",
        str(cwd / "work"),
        "--results-file",
        str(cwd / "results.json"),
        *mirrors,
        *extra,
    ]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without our settings, except `upstream_signatures` off: the
    loopback fixtures are unsigned copies (tests/upstream/ turns it on, with test keys)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERDISKS_")}
    env[UNSIGNED[0]] = UNSIGNED[1]
    env.update(extra)
    return env


def probed(probe: str, out: Path, *args: str, cwd: Path, **env: str) -> str:
    """Run `python -c PROBE ARGS` (a probe that runs `python -m containerdisks ARGS` and writes
    what it saw to `$PROBE_OUT` = `out`) with `env` added; it must exit 0. Its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(PROBE_OUT=str(out), **env),
        cwd=cwd,
    )
    assert 0 == result.returncode, result.stderr
    return result.stdout


def push(
    srv: UpstreamServer,
    target: str,
    *extra: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    via: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(srv, target, *extra, cwd=cwd, via=via),
        capture_output=True,
        text=True,
        timeout=120,
        env=env or clean_env(),
        cwd=cwd,
    )


def static_catalog(
    path: Path, url: str, checksum: str, *, name: str = "tiny", extra: str = ""
) -> Path:
    """Write a catalog (replacing the default) of one entry `<name>:1`, x86_64 only, from the
    `static` source at `url` with `checksum`; `extra` is more YAML lines for the entry."""
    path.write_text(
        "catalog: replace\n"
        "entries:\n"
        f"  - name: {name}\n"
        '    version: "1"\n'
        "    arches: [x86_64]\n"
        f"{extra}"
        "    source:\n"
        "      kind: static\n"
        f"      url: {url}\n"
        f'      checksum: "{checksum}"\n'
    )
    return path
