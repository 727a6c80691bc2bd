"""Credentials from every auth-file location and from credential helpers; then used for real.

The files are written by the tests in the formats docker and containers-auth.json(5) define;
the helper is a small shell script named ``docker-credential-test`` in a directory put on the
``PATH`` the lookup sees. Nothing here reads the real home directory: every lookup gets an
``environ`` of its own.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from containerdisks.oci import (
    Credentials,
    CredentialsError,
    RegistryClient,
    UnauthorizedError,
    find_credentials,
)
from containerdisks.oci.credentials import auth_file_paths
from tests.support.registry import PASSWORD, USERNAME, Registry, start_registry

HOST = "registry.test:5000"
SECRET = "file-s3cret"


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write_json(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment naming no auth file at all, with HOME and XDG_RUNTIME_DIR in the
    test's directory (so /run/containers/$UID is not read either)."""
    home = tmp_path / "home"
    home.mkdir()
    path = os.environ.get("PATH", os.defpath)
    return {"HOME": str(home), "PATH": path, "XDG_RUNTIME_DIR": str(tmp_path / "no-run")}


@pytest.fixture(autouse=True)
def _more_secrets(secrets: set[str]) -> None:
    secrets.update({SECRET, auth("user", SECRET), "id-t0ken-9", "reg-t0ken-8", "helper-s3cret"})


LOCATIONS = ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG", "HOME"]


def place(location: str, tmp_path: Path, env: dict[str, str], doc: object) -> Path:
    """Write ``doc`` where ``location`` says and point ``env`` at it."""
    if location == "REGISTRY_AUTH_FILE":
        path = write_json(tmp_path / "somewhere" / "auth.json", doc)
        env["REGISTRY_AUTH_FILE"] = str(path)
    elif location == "XDG_RUNTIME_DIR":
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
        path = write_json(tmp_path / "run" / "containers" / "auth.json", doc)
    elif location == "XDG_CONFIG_HOME":
        env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
        path = write_json(tmp_path / "config" / "containers" / "auth.json", doc)
    elif location == "DOCKER_CONFIG":
        env["DOCKER_CONFIG"] = str(tmp_path / "dockercfg")
        path = write_json(tmp_path / "dockercfg" / "config.json", doc)
    else:
        path = write_json(Path(env["HOME"]) / ".docker" / "config.json", doc)
    return path


@pytest.mark.parametrize("location", LOCATIONS)
def test_each_location_is_read(location: str, tmp_path: Path, env: dict[str, str]) -> None:
    path = place(location, tmp_path, env, {"auths": {HOST: {"auth": auth("user", SECRET)}}})
    found = find_credentials(HOST, environ=env)
    assert found == Credentials("user", SECRET, source=f"{path} ({HOST})")
    assert found.has_basic
    assert find_credentials("other.test", environ=env) is None


def test_the_search_order_and_the_first_file_that_knows_the_host_wins(
    tmp_path: Path, env: dict[str, str]
) -> None:
    for n, location in enumerate(LOCATIONS[:4]):
        place(location, tmp_path, env, {"auths": {HOST: {"auth": auth(f"user{n}", SECRET)}}})
    assert auth_file_paths(env) == [
        tmp_path / "somewhere" / "auth.json",
        tmp_path / "run" / "containers" / "auth.json",
        tmp_path / "config" / "containers" / "auth.json",
        tmp_path / "dockercfg" / "config.json",
    ]
    found = find_credentials(HOST, environ=env)
    assert found is not None
    assert found.username == "user0"
    # a file that does not know the host passes the search on
    write_json(Path(env["REGISTRY_AUTH_FILE"]), {"auths": {"elsewhere.test": {}}})
    found = find_credentials(HOST, environ=env)
    assert found is not None
    assert found.username == "user1"
    # DOCKER_CONFIG replaces ~/.docker
    place("HOME", tmp_path, env, {"auths": {"home.test": {"auth": auth("home", SECRET)}}})
    assert find_credentials("home.test", environ=env) is None
    del env["DOCKER_CONFIG"]
    found = find_credentials("home.test", environ=env)
    assert found is not None
    assert found.username == "home"


def test_without_xdg_variables_the_run_and_home_defaults_are_searched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(home)}
    explicit = tmp_path / "flag.json"
    assert auth_file_paths(env, auth_file=explicit) == [
        explicit,
        Path("/run/containers") / str(os.getuid()) / "auth.json",
        home / ".config" / "containers" / "auth.json",
        home / ".docker" / "config.json",
    ]
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "env.json")  # the flag takes its place
    assert auth_file_paths(env, auth_file=explicit)[0] == explicit
    assert auth_file_paths(env)[0] == tmp_path / "env.json"


def test_an_explicit_auth_file_must_exist_where_the_others_may_not(
    tmp_path: Path, env: dict[str, str]
) -> None:
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "absent-env.json")
    assert find_credentials(HOST, environ=env) is None  # skipped, as containers/image does
    missing = tmp_path / "absent-flag.json"
    with pytest.raises(CredentialsError) as e:
        find_credentials(HOST, environ=env, auth_file=missing)
    assert f"{missing}: cannot read: no such file" == str(e.value)


def test_the_most_specific_namespace_key_wins(tmp_path: Path, env: dict[str, str]) -> None:
    place(
        "REGISTRY_AUTH_FILE",
        tmp_path,
        env,
        {
            "auths": {
                "quay.io": {"auth": auth("host", SECRET)},
                "quay.io/org": {"auth": auth("org", SECRET)},
                "quay.io/org/repo": {"auth": auth("repo", SECRET)},
            }
        },
    )

    def user(name: str) -> str | None:
        found = find_credentials(name, environ=env)
        return found.username if found else None

    assert user("quay.io/org/repo") == "repo"
    assert user("quay.io/org/repo/deeper") == "repo"
    assert user("quay.io/org/other") == "org"
    assert user("quay.io/org") == "org"
    assert user("quay.io/elsewhere") == "host"
    assert user("quay.io") == "host"


@pytest.mark.parametrize(
    "key", ["https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io"]
)
@pytest.mark.parametrize(
    "name", ["docker.io", "docker.io/library", "index.docker.io/kubevirt", "registry-1.docker.io"]
)
def test_docker_hub_aliases(key: str, name: str, tmp_path: Path, env: dict[str, str]) -> None:
    place("HOME", tmp_path, env, {"auths": {key: {"auth": auth("hub", SECRET)}}})
    found = find_credentials(name, environ=env)
    assert found is not None
    assert found.username == "hub"


def test_legacy_url_keys_keep_only_their_host(tmp_path: Path, env: dict[str, str]) -> None:
    key = f"https://{HOST}/v1/"
    place("HOME", tmp_path, env, {"auths": {key: {"auth": auth("legacy", SECRET)}}})
    found = find_credentials(f"{HOST}/ns", environ=env)
    assert found is not None
    assert found.username == "legacy"


def test_identity_and_registry_tokens(tmp_path: Path, env: dict[str, str]) -> None:
    place(
        "HOME",
        tmp_path,
        env,
        {
            "auths": {
                "a.test": {"auth": auth("user", ""), "identitytoken": "id-t0ken-9"},
                "b.test": {"registrytoken": "reg-t0ken-8"},
                "c.test": {},
                "d.test": {"username": "plain", "password": SECRET},
            }
        },
    )
    a = find_credentials("a.test", environ=env)
    assert a is not None
    assert (a.username, a.identity_token, a.has_basic) == ("user", "id-t0ken-9", False)
    b = find_credentials("b.test", environ=env)
    assert b is not None
    assert b.registry_token == "reg-t0ken-8"
    assert find_credentials("c.test", environ=env) is None
    d = find_credentials("d.test", environ=env)
    assert d is not None
    assert (d.username, d.password) == ("plain", SECRET)
    for found in (a, b, d):
        for text in (repr(found), str(found), f"{found}", f"{found!r}"):
            assert "t0ken" not in text
            assert SECRET not in text
    assert repr(a) == f"Credentials(username='user', identity_token='***', source={a.source!r})"


def test_unusable_files_are_errors_that_do_not_quote_them(
    tmp_path: Path, env: dict[str, str]
) -> None:
    path = place("HOME", tmp_path, env, {})
    path.write_text('{"auths": {"a.test": {"auth": "' + SECRET)  # cut short
    with pytest.raises(CredentialsError) as caught:
        find_credentials("a.test", environ=env)
    assert str(caught.value) == f"{path}: not JSON (line 1)"

    not_base64 = SECRET + "!!"
    write_json(path, {"auths": {"a.test": {"auth": not_base64}}})
    with pytest.raises(CredentialsError) as caught:
        find_credentials("a.test", environ=env)
    assert str(caught.value) == f"{path} (a.test): auth is not base64 of user:password"
    no_colon = base64.b64encode(SECRET.encode()).decode()
    write_json(path, {"auths": {"a.test": {"auth": no_colon}}})
    with pytest.raises(CredentialsError, match="not base64 of user:password") as caught:
        find_credentials("a.test", environ=env)
    assert SECRET not in str(caught.value)
    assert no_colon not in str(caught.value)


# -- credential helpers --------------------------------------------------------------------

HELPER = """#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
printf '%s\\n' "$server" >> "{log}"
case "$server" in
{cases}
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def install_helper(
    directory: Path, env: dict[str, str], answers: dict[str, str], name: str = "test"
) -> Path:
    """Write ``docker-credential-<name>`` answering ``answers[server]`` (raw stdout lines) and
    put its directory first on ``env["PATH"]``; returns the file where it logs what it got."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{name}.log"
    cases = "\n".join(f"  '{server}') {answer} ;;" for server, answer in answers.items())
    script = directory / f"docker-credential-{name}"
    script.write_text(HELPER.format(log=log, cases=cases))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    if str(directory) not in env["PATH"].split(os.pathsep):
        env["PATH"] = f"{directory}{os.pathsep}{env['PATH']}"
    return log


def answer(user: str, secret: str) -> str:
    doc = json.dumps({"ServerURL": "x", "Username": user, "Secret": secret})
    return f"echo '{doc}'"


def test_cred_helpers_take_priority_over_auths_and_creds_store(
    tmp_path: Path, env: dict[str, str]
) -> None:
    log = install_helper(tmp_path / "bin", env, {HOST: answer("from-helper", "helper-s3cret")})
    store_log = install_helper(
        tmp_path / "bin", env, {HOST: answer("from-store", SECRET)}, name="store"
    )
    place(
        "HOME",
        tmp_path,
        env,
        {
            "auths": {HOST: {"auth": auth("from-file", SECRET)}},
            "credHelpers": {HOST: "test"},
            "credsStore": "store",
        },
    )
    found = find_credentials(HOST, environ=env)
    assert found == Credentials(
        "from-helper", "helper-s3cret", source=f"docker-credential-test ({HOST})"
    )
    assert log.read_text() == f"{HOST}\n"
    assert not store_log.exists()


def test_a_helper_without_credentials_passes_on_to_auths_then_the_store(
    tmp_path: Path, env: dict[str, str]
) -> None:
    install_helper(tmp_path / "bin", env, {})
    store_log = install_helper(
        tmp_path / "bin", env, {"other.test": answer("from-store", SECRET)}, name="store"
    )
    place(
        "HOME",
        tmp_path,
        env,
        {
            "auths": {HOST: {"auth": auth("from-file", SECRET)}},
            "credHelpers": {HOST: "test", "other.test": "test"},
            "credsStore": "store",
        },
    )
    found = find_credentials(HOST, environ=env)
    assert found is not None
    assert found.username == "from-file"
    found = find_credentials("other.test", environ=env)
    assert found is not None
    assert found.username == "from-store"
    assert store_log.read_text() == "other.test\n"
    assert find_credentials("nobody.test", environ=env) is None


def test_helper_identity_token_and_docker_hub_server_url(
    tmp_path: Path, env: dict[str, str]
) -> None:
    hub = "https://index.docker.io/v1/"
    log = install_helper(tmp_path / "bin", env, {hub: answer("<token>", "id-t0ken-9")})
    place("HOME", tmp_path, env, {"credsStore": "test"})
    found = find_credentials("docker.io/kubevirt", environ=env)
    assert found is not None
    assert (found.username, found.password, found.identity_token) == ("", "", "id-t0ken-9")
    assert log.read_text() == f"{hub}\n"


def test_helper_failures_are_errors_without_secrets(tmp_path: Path, env: dict[str, str]) -> None:
    install_helper(tmp_path / "bin", env, {HOST: f"echo '{SECRET}' >&2; exit 3"})
    place("HOME", tmp_path, env, {"credHelpers": {HOST: "test", "x.test": "missing"}})
    with pytest.raises(CredentialsError) as caught:
        find_credentials(HOST, environ=env)
    assert str(caught.value) == "credential helper docker-credential-test failed with exit 3"
    with pytest.raises(CredentialsError) as caught:
        find_credentials("x.test", environ=env)
    assert str(caught.value) == "credential helper docker-credential-missing not found on PATH"
    place("HOME", tmp_path, env, {"credsStore": "../evil"})
    with pytest.raises(CredentialsError, match="not valid"):
        find_credentials(HOST, environ=env)


# -- used for real -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_registry_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("creds-registry"), auth="basic") as reg:
        yield reg


@pytest.mark.parametrize("location", [*LOCATIONS, "credHelpers"])
async def test_found_credentials_push_to_a_basic_auth_registry(
    location: str, basic_registry_module: Registry, tmp_path: Path, env: dict[str, str]
) -> None:
    reg = basic_registry_module
    if location == "credHelpers":
        install_helper(tmp_path / "bin", env, {reg.host: answer(USERNAME, PASSWORD)})
        place("HOME", tmp_path, env, {"credHelpers": {reg.host: "test"}})
    else:
        place(location, tmp_path, env, {"auths": {reg.host: {"auth": auth(USERNAME, PASSWORD)}}})
    credentials = find_credentials(f"{reg.host}/creds", environ=env)
    assert credentials is not None
    data = f"pushed with credentials from {location}".encode()
    async with RegistryClient(reg.host, credentials=credentials) as client:
        stored = await client.put_blob("creds/test", data)
        assert await client.get_blob("creds/test", stored.digest, max_size=100) == data


async def test_no_credentials_found_means_anonymous_and_refused(
    basic_registry_module: Registry, env: dict[str, str]
) -> None:
    reg = basic_registry_module
    assert find_credentials(reg.host, environ=env) is None
    async with RegistryClient(reg.host, credentials=None) as client:
        with pytest.raises(UnauthorizedError) as caught:
            await client.put_blob("creds/test", b"anonymous")
    assert str(caught.value).endswith(": HTTP 401: authentication required (no credentials given)")


async def test_a_refused_head_says_why(basic_registry_module: Registry) -> None:
    """A HEAD has no body to explain a 401: the client says that credentials are missing."""
    async with RegistryClient(basic_registry_module.host, credentials=None) as client:
        with pytest.raises(UnauthorizedError) as caught:
            await client.head_manifest("creds/test", "latest")
    assert str(caught.value).endswith(": HTTP 401: authentication required (no credentials given)")
