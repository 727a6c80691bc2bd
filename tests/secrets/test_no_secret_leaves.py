"""No secret leaves the process (issue 19, item 7), shown with real processes on loopback.

- `images push --dry-run=false` and `serve` with credentials from an auth.json, against a fake
  registry that echoes the credentials and tokens it is sent in its error bodies (raw, base64,
  percent- and form-encoded; tests/support/echo_registry.py): the password, the Basic string and
  the token, in any of those forms, are in neither stdout, stderr at `--log-level debug`, the
  results file, `/status` nor `/metrics`; the echoes did happen, masked as `***`.
- `docs publish --dry-run=false` with a `--quay-token-file`, against the fake Quay answering
  with the token in its error bodies: the token shows nowhere.
- A real registry on HTTPS whose token realm is plain HTTP: refused, in one line naming the
  realm and the registry, and no token request is sent; with `--insecure-skip-tls` the push
  goes through that realm and publishes.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.conftest import Daemon, serve_command
from tests.support.cli import clean_env, push
from tests.support.echo_registry import EchoRegistry
from tests.support.fake_quay import FakeQuay
from tests.support.registry import PASSWORD as REGISTRY_PASSWORD
from tests.support.registry import USERNAME as REGISTRY_USER
from tests.support.registry import Registry, start_registry
from tests.support.upstream_server import UpstreamServer, lay_out_upstream

USER = "echo-user"
#: a space, a quote, a backslash, a non-ASCII letter, `+` and `/`: every encoding changes it
PASSWORD = 'pw "q\\ é+/ 42-Secret'
QUAY_TOKEN = "quayTOKEN-7Qx2-s3cr3t-Zp"
MASK = "***"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def spellings(secret: str) -> dict[str, str]:
    """``secret`` as a server might echo it, or as our output might render it, by name."""
    return {
        "raw": secret,
        "base64": b64(secret),
        "percent-encoded": urllib.parse.quote(secret, safe=""),
        "form-encoded": urllib.parse.quote_plus(secret),
        "JSON-escaped": json.dumps(secret)[1:-1],
        "JSON-escaped, non-ASCII kept": json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def secrets_of(echo: EchoRegistry | None = None) -> dict[str, str]:
    found = {f"password {k}": v for k, v in spellings(PASSWORD).items()}
    found |= {f"Basic {k}": v for k, v in spellings(b64(f"{USER}:{PASSWORD}")).items()}
    if echo is not None:
        found |= {f"token {k}": v for k, v in spellings(echo.token).items()}
    return found


def assert_clean(text: str, where: str, secrets: dict[str, str]) -> None:
    for name, value in secrets.items():
        if value in text:
            # no traceback or assertion rewrite: either would print the secret again
            pytest.fail(f"the {name} shows in {where}", pytrace=False)


def auth_env(
    tmp_path: Path, host: str, user: str = USER, password: str = PASSWORD
) -> dict[str, str]:
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {host: {"auth": b64(f"{user}:{password}")}}}))
    return clean_env(REGISTRY_AUTH_FILE=str(auth))


def test_push_shows_no_secret_a_registry_echoes(
    tmp_path: Path, fedora: tuple[UpstreamServer, object]
) -> None:
    srv, _ = fedora
    with EchoRegistry() as echo:
        env = auth_env(tmp_path, echo.host)
        result = push(srv, f"{echo.host}/cd", "--log-level", "debug", cwd=tmp_path, env=env)
    assert 1 == result.returncode, result.stderr[-3000:]
    # the fake echoed the Basic credentials (token service) and the token (registry) ...
    assert echo.echoed("Basic") >= 1
    assert echo.echoed("Bearer") >= 1
    results = (tmp_path / "results.json").read_text()
    for where, text in (("stdout", result.stdout), ("stderr", result.stderr), ("results", results)):
        assert_clean(text, where, secrets_of(echo))
    # ... and what it echoed reached the results file and the log, masked
    errors = [r["Err"] for r in json.loads(results).values() if "Err" in r]
    assert errors
    assert all("HTTP 403 DENIED: you sent Bearer ***" in e for e in errors), errors
    assert '"level": "debug"' in result.stderr  # debug events were written
    assert MASK in result.stderr


def test_serve_status_metrics_and_logs_show_no_secret(
    tmp_path: Path, fedora: tuple[UpstreamServer, object]
) -> None:
    srv, _ = fedora
    with EchoRegistry() as echo:
        env = auth_env(tmp_path, echo.host)
        command = serve_command(srv, f"{echo.host}/cd", tmp_path, "--log-level", "debug")
        daemon = Daemon(command, tmp_path, env, "serve")
        try:

            def failed() -> bool:
                code, body = daemon.get("/status")
                if code != 200:
                    return False  # not listening yet
                entries = json.loads(body)["entries"].values()
                return any(e["result"] == "failed" for e in entries)

            daemon.wait_for("an entry to fail", failed, 60)
            status_code, status = daemon.get("/status")
            metrics_code, metrics = daemon.get("/metrics")
            daemon.signal(signal.SIGTERM)
            daemon.wait()
        finally:
            daemon.kill()
    assert (200, 200) == (status_code, metrics_code)
    log = daemon.log_text()
    for where, text in (
        ("/status", status.decode()),
        ("/metrics", metrics.decode()),
        ("the log (stderr)", log),
    ):
        assert_clean(text, where, secrets_of(echo))
    errors = [e["error"] for e in json.loads(status)["entries"].values() if e["error"]]
    assert errors
    assert all("you sent Bearer ***" in e for e in errors), errors
    assert echo.echoed("Basic") >= 1
    assert '"level": "debug"' in log


def test_docs_publish_shows_no_quay_token_quay_echoes(tmp_path: Path) -> None:
    def echo(status: str) -> dict[str, object]:
        said = (
            f"{status}: Bearer {QUAY_TOKEN}; b64 {b64(QUAY_TOKEN)}; "
            f"url {urllib.parse.quote('Bearer ' + QUAY_TOKEN, safe='')}"
        )
        return {"error_message": said}

    token_file = tmp_path / "quay-token"
    token_file.write_text(QUAY_TOKEN + "\n")
    api = "/api/v1/repository/containerdisks/debian"
    up = lay_out_upstream(tmp_path / "up", ["fedora/releases.json"])
    with UpstreamServer(up) as srv, FakeQuay(QUAY_TOKEN, ["containerdisks/debian"]) as quay:
        quay.respond("PUT", api, 500, body=echo("busy"), times=1)  # a retry, logged
        quay.respond("POST", api + "/changevisibility", 403, body=echo("denied"), times=None)
        result = subprocess.run(
            [
                sys.executable, "-m", "containerdisks", "docs", "publish", "--dry-run=false",
                "--quay-api-url", quay.url, "--quay-token-file", str(token_file),
                "--focus", "debian:13", "--log-level", "debug", "--log-format", "json",
                *srv.mirror_args(),
            ],
            capture_output=True, text=True, timeout=120, env=clean_env(),
        )  # fmt: skip
    secrets = {f"token {k}": v for k, v in spellings(QUAY_TOKEN).items()}
    for where, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        assert_clean(text, where, secrets)
    assert 1 == result.returncode, result.stderr[-3000:]
    assert ["PUT", "PUT", "POST"] == [r.method for r in quay.requests]
    assert f"denied: Bearer {MASK}; b64 {MASK}; url Bearer%20{MASK}" in result.stdout
    assert '"event": "quay_retry"' in result.stderr
    assert f"busy: Bearer {MASK}" in result.stderr


@pytest.fixture
def https_registry_with_http_realm(tmp_path: Path) -> Iterator[Registry]:
    """The real registry on HTTPS; its token service (tests/support/token_server.py) is on
    plain HTTP, so its Bearer realm is an http:// URL."""
    with start_registry(tmp_path / "registry", tls=True, auth="token") as reg:
        assert reg.token_server is not None
        assert reg.token_server.realm.startswith("http://")
        yield reg


def test_an_http_realm_of_an_https_registry_is_refused_unless_insecure_skip_tls(
    tmp_path: Path,
    fedora: tuple[UpstreamServer, object],
    https_registry_with_http_realm: Registry,
) -> None:
    reg = https_registry_with_http_realm
    assert reg.token_server is not None
    assert reg.ca_file is not None
    srv, _ = fedora
    env = auth_env(tmp_path, reg.host, REGISTRY_USER, REGISTRY_PASSWORD)
    target = f"{reg.host}/cd"

    refused = push(srv, target, "--ca-file", str(reg.ca_file), cwd=tmp_path, env=env)
    assert 1 == refused.returncode, refused.stderr[-3000:]
    errors = [r["Err"] for r in json.loads((tmp_path / "results.json").read_text()).values()]
    line = (
        f"{reg.host}: token realm {reg.token_server.realm} is plain http for an https registry;"
        " refused (--insecure-skip-tls allows it)"
    )
    assert errors
    assert all(line in e for e in errors), errors
    assert 0 == reg.token_server.count()  # not even an anonymous token request went out

    accepted = push(srv, target, "--insecure-skip-tls", cwd=tmp_path, env=env)
    assert 0 == accepted.returncode, accepted.stderr[-3000:]
    assert reg.token_server.count() >= 1
    assert "40" in reg.list_tags("cd/fedora")
