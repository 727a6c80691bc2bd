"""`images push` finds the credentials `skopeo login` wrote where it writes them by default
(containers-auth.json(5)), and `--authfile`; a bad explicit file is one line naming it.

Real processes throughout: a registry with htpasswd Basic auth, `skopeo login` writing its
default file, and `containerdisks images push` from a loopback Fedora upstream. The files of the
`/run/containers/$UID` case live outside the test's directory: whatever was there before is
put back afterwards.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import clean_env, push
from tests.support.registry import Registry, start_registry
from tests.support.upstream_server import UpstreamServer


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "registry", auth="basic") as r:
        yield r


def _bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No credentials anywhere but where the test puts them: a fresh HOME (so no docker
    config), no REGISTRY_AUTH_FILE, no XDG_RUNTIME_DIR unless given. No DOCKER_CONFIG either:
    skopeo login writes there when it is set."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = clean_env(HOME=str(home))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        env.pop(name, None)
    env.update(extra)
    return env


def _login(reg: Registry, env: dict[str, str], *flags: str) -> None:
    assert reg.credentials is not None
    user, password = reg.credentials
    done = subprocess.run(
        ["skopeo", "login", "--tls-verify=false", "-u", user, "--password-stdin", *flags,
         reg.host],
        input=password, capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr


def _assert_pushed(done: subprocess.CompletedProcess[str], reg: Registry) -> None:
    assert 0 == done.returncode, done.stderr[-3000:]
    assert reg.credentials is not None
    for text in (done.stdout, done.stderr):
        assert reg.credentials[1] not in text
    assert "40" in reg.list_tags("cd/fedora")


def test_push_reads_what_skopeo_login_wrote_under_xdg_runtime_dir(
    tmp_path: Path, reg: Registry, fedora: tuple[UpstreamServer, Any]
) -> None:
    srv, _ = fedora
    run = tmp_path / "xdg-run"
    run.mkdir(mode=0o700)
    env = _bare_env(tmp_path, XDG_RUNTIME_DIR=str(run))
    before = push(srv, f"{reg.host}/cd", cwd=tmp_path, env=env)
    assert 1 == before.returncode  # nobody logged in: the registry says 401
    _login(reg, env)
    assert (run / "containers" / "auth.json").is_file()  # where skopeo writes by default
    _assert_pushed(push(srv, f"{reg.host}/cd", cwd=tmp_path, env=env), reg)


@pytest.fixture
def run_containers_file() -> Iterator[Path]:
    """`/run/containers/$UID/auth.json`, put back as it was after the test (or removed)."""
    path = Path("/run/containers") / str(os.getuid()) / "auth.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        pytest.skip(f"{path.parent} cannot be created by this user")
    saved = path.read_bytes() if path.exists() else None
    try:
        yield path
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


def test_push_reads_run_containers_uid_without_xdg_runtime_dir(
    tmp_path: Path,
    reg: Registry,
    fedora: tuple[UpstreamServer, Any],
    run_containers_file: Path,
) -> None:
    srv, _ = fedora
    env = _bare_env(tmp_path)
    _login(reg, env)
    assert reg.host in run_containers_file.read_text()  # skopeo wrote there, not elsewhere
    _assert_pushed(push(srv, f"{reg.host}/cd", cwd=tmp_path, env=env), reg)


def test_push_reads_the_authfile_flag_first(
    tmp_path: Path, reg: Registry, fedora: tuple[UpstreamServer, Any]
) -> None:
    srv, _ = fedora
    run = tmp_path / "xdg-run"
    (run / "containers").mkdir(parents=True)
    env = _bare_env(tmp_path, XDG_RUNTIME_DIR=str(run))
    # a wrong password where the search would look next: the flag's file must win
    wrong = '{"auths": {"HOST": {"auth": "dGVzdHVzZXI6d3Jvbmc="}}}'  # testuser:wrong
    (run / "containers" / "auth.json").write_text(wrong.replace("HOST", reg.host))
    authfile = tmp_path / "login.json"
    _login(reg, env, "--authfile", str(authfile))
    done = push(
        srv, f"{reg.host}/cd", "--authfile", str(authfile),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    _assert_pushed(done, reg)


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("missing", "cannot read: no such file"),
        ("directory", "cannot read: Is a directory"),
        ("malformed", "not JSON (line 1)"),
    ],
)
def test_a_bad_authfile_is_one_line_naming_it(
    tmp_path: Path, reg: Registry, fedora: tuple[UpstreamServer, Any], kind: str, says: str
) -> None:
    srv, _ = fedora
    authfile = tmp_path / "auth.json"
    if kind == "directory":
        authfile.mkdir()
    elif kind == "malformed":
        assert reg.credentials is not None
        authfile.write_text(f'{{"auths": {{"{reg.host}": {{"auth": "{reg.credentials[1]}"')
    done = push(
        srv, f"{reg.host}/cd", "--authfile", str(authfile),
        cwd=tmp_path, env=_bare_env(tmp_path),
    )  # fmt: skip
    assert 2 == done.returncode, done.stderr
    lines = done.stderr.strip().splitlines()
    assert [f"containerdisks: credentials for {reg.host}: {authfile}: {says}"] == lines
    assert reg.credentials is not None
    assert reg.credentials[1] not in done.stderr + done.stdout
