"""Registry credentials from the files podman, skopeo and docker keep them in.

Decision: we read what the user's container tools already use, in their order
(containers-auth.json(5), where ``podman login`` and ``skopeo login`` write), instead of a
credential store of our own: the first of these files that knows the registry wins.

1. the explicit file (``--authfile``), else ``$REGISTRY_AUTH_FILE``
2. ``${XDG_RUNTIME_DIR}/containers/auth.json``, or ``/run/containers/$UID/auth.json`` when
   ``XDG_RUNTIME_DIR`` is unset (where ``skopeo login`` writes as root in a plain shell)
3. ``${XDG_CONFIG_HOME:-~/.config}/containers/auth.json``
4. ``$DOCKER_CONFIG/config.json``, or ``~/.docker/config.json`` without ``DOCKER_CONFIG``

A missing file is skipped, except the explicit one: ``--authfile`` naming nothing is an error
(as podman's). Unlike containers/image, an explicit file does not end the search: a registry it
does not know is looked up in the files after it. ``~/.dockercfg`` (docker's pre-1.7 format) is
not read.

In one file: ``credHelpers[<host>]`` first (run ``docker-credential-<name> get`` with the server
URL on stdin; it answers ``{"ServerURL", "Username", "Secret"}``, user ``<token>`` meaning an
identity token), then ``auths`` (``auth`` = base64 ``user:password``, ``identitytoken``,
``registrytoken``; a key is a host, a legacy URL such as ``https://index.docker.io/v1/``, or, as
containers-auth.json(5) allows, ``host/namespace``, and the most specific key wins), then the
``credsStore`` helper. ``docker.io``, ``index.docker.io`` and ``registry-1.docker.io`` are one
registry, whose helper server URL is ``https://index.docker.io/v1/`` (docker-py).

A helper that says "credentials not found" is no error; a file that is not JSON, an ``auth`` that
is not base64 ``user:password``, or a helper that cannot run or fails is a
:class:`CredentialsError` naming the file or helper and never what it holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from containerdisks.oci import safejson
from containerdisks.oci.auth import Credentials
from containerdisks.oci.errors import CredentialsError
from containerdisks.oci.reference import DOCKER_HUB, parse_registry

__all__ = ["HELPER_TIMEOUT", "auth_file_paths", "find_credentials", "run_credential_helper"]

logger = logging.getLogger("containerdisks.oci")

#: Seconds a credential helper may take to answer.
HELPER_TIMEOUT: Final = 30.0
#: What docker-py calls Docker Hub in config files and asks credential helpers for.
DOCKER_HUB_SERVER: Final = "https://index.docker.io/v1/"
_HUB_NAMES: Final = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})
_HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOKEN_USERNAME: Final = "<token>"  # noqa: S105  (a marker user name, not a secret)
_NOT_FOUND: Final = "credentials not found"


def auth_file_paths(
    environ: Mapping[str, str] | None = None, *, auth_file: Path | None = None
) -> list[Path]:
    """The files searched, in order (whether they exist or not); `auth_file` is the explicit
    one (``--authfile``), which takes ``$REGISTRY_AUTH_FILE``'s place."""
    env = os.environ if environ is None else environ
    paths: list[Path] = []
    if auth_file is not None:
        paths.append(auth_file)
    elif env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    else:
        paths.append(Path("/run/containers") / str(os.getuid()) / "auth.json")
    home = Path(env.get("HOME") or str(Path.home()))
    config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    paths.append(config_home / "containers" / "auth.json")
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    else:
        paths.append(home / ".docker" / "config.json")
    return paths


def _canonical_host(host: str) -> str:
    host = host.lower()
    return DOCKER_HUB if host in _HUB_NAMES else host


def _normalize_key(key: str) -> str:
    """``host[/path]`` of an ``auths``/``credHelpers`` key; URLs (docker's legacy form) keep only
    their host."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]
    key = key.rstrip("/")
    host, sep, path = key.partition("/")
    return _canonical_host(host) + (sep + path if path else "")


def _candidates(host: str, namespace: str) -> list[str]:
    """Keys to look up, most specific first: ``host/a/b``, ``host/a``, ``host``."""
    parts = [p for p in namespace.split("/") if p]
    return [host + "".join("/" + p for p in parts[:n]) for n in range(len(parts), 0, -1)] + [host]


def _server_url(host: str) -> str:
    return DOCKER_HUB_SERVER if host == DOCKER_HUB else host


def _from_entry(entry: object, where: str) -> Credentials | None:
    """Credentials of one ``auths`` entry, or None when it holds none."""
    if not isinstance(entry, dict):
        return None
    username = entry.get("username") if isinstance(entry.get("username"), str) else ""
    password = entry.get("password") if isinstance(entry.get("password"), str) else ""
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"{where}: auth is not base64 of user:password") from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise CredentialsError(f"{where}: auth is not base64 of user:password")
        username, password = user, secret
    identity = entry.get("identitytoken")
    registry_token = entry.get("registrytoken")
    credentials = Credentials(
        username=str(username or ""),
        password=str(password or ""),
        identity_token=identity if isinstance(identity, str) else "",
        registry_token=registry_token if isinstance(registry_token, str) else "",
        source=where,
    )
    if not (credentials.has_basic or credentials.identity_token or credentials.registry_token):
        return None
    return credentials


def run_credential_helper(
    name: str,
    server_url: str,
    *,
    environ: Mapping[str, str] | None = None,
    timeout: float = HELPER_TIMEOUT,
) -> Credentials | None:
    """Ask ``docker-credential-<name> get`` for ``server_url``; None when it has nothing."""
    helper = f"docker-credential-{name}"
    if not _HELPER_NAME.match(name):
        raise CredentialsError(f"credential helper name {name!r} is not valid")
    env = dict(os.environ if environ is None else environ)
    executable = shutil.which(helper, path=env.get("PATH", os.defpath))
    if executable is None:
        raise CredentialsError(f"credential helper {helper} not found on PATH")
    try:
        done = subprocess.run(  # noqa: S603  (a named helper found on PATH, as docker runs it)
            [executable, "get"],
            input=server_url.encode(),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"credential helper {helper} took more than {timeout:g}s") from None
    except OSError as exc:
        raise CredentialsError(f"credential helper {helper} cannot run: {exc.strerror}") from None
    source = f"{helper} ({server_url})"
    if done.returncode != 0:
        said = (done.stdout + done.stderr).decode("utf-8", "replace").lower()
        if _NOT_FOUND in said:
            return None
        raise CredentialsError(f"credential helper {helper} failed with exit {done.returncode}")
    try:
        doc: Any = safejson.loads(done.stdout)
    except ValueError:
        raise CredentialsError(f"credential helper {helper} did not answer JSON") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"credential helper {helper} did not answer a JSON object")
    username = doc.get("Username")
    secret = doc.get("Secret")
    if not isinstance(secret, str) or not secret:
        return None
    if username == _TOKEN_USERNAME:
        return Credentials(identity_token=secret, source=source)
    return Credentials(
        username=username if isinstance(username, str) else "", password=secret, source=source
    )


def _read(path: Path, *, required: bool = False) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise CredentialsError(f"{path}: cannot read: no such file") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise CredentialsError(f"{path}: cannot read: {reason}") from None
    try:
        doc = safejson.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{path}: not JSON (line {exc.lineno})") from None
    except ValueError as exc:
        raise CredentialsError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"{path}: not a JSON object")
    return doc


def _from_file(
    path: Path, doc: Mapping[str, Any], host: str, namespace: str, env: Mapping[str, str]
) -> Credentials | None:
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if isinstance(name, str) and name and _normalize_key(key) == host:
                found = run_credential_helper(name, _server_url(host), environ=env)
                if found is not None:
                    return found
    auths = doc.get("auths")
    if isinstance(auths, dict):
        by_key = {_normalize_key(k): (k, v) for k, v in auths.items() if isinstance(k, str)}
        for candidate in _candidates(host, namespace):
            if candidate in by_key:
                key, entry = by_key[candidate]
                found = _from_entry(entry, f"{path} ({key})")
                if found is not None:
                    return found
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, _server_url(host), environ=env)
    return None


def find_credentials(
    name: str, *, environ: Mapping[str, str] | None = None, auth_file: Path | None = None
) -> Credentials | None:
    """Credentials for the registry of ``name`` (``quay.io``, ``quay.io/containerdisks``,
    ``127.0.0.1:5000/ns/repo``), or None to go anonymous.

    The namespace part only matters for containers-auth.json keys of the form ``host/namespace``.
    Blocking: it reads files and may run a helper; call it before connecting, and again to follow
    rotated files (in async code, through ``asyncio.to_thread``). ``environ`` replaces
    ``os.environ`` (for tests); ``auth_file`` is the explicit file (``--authfile``), which must
    exist.
    """
    env = os.environ if environ is None else environ
    parsed = parse_registry(name)
    host = _canonical_host(parsed.host)
    paths = auth_file_paths(env, auth_file=auth_file)
    for path in paths:
        doc = _read(path, required=auth_file is not None and path == auth_file)
        if doc is None:
            continue
        found = _from_file(path, doc, host, parsed.namespace, env)
        if found is not None:
            logger.debug("credentials for %s from %s", host, found.source)
            return found
    logger.debug("no credentials for %s in %s", host, ", ".join(map(str, paths)))
    return None
