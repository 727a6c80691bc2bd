"""A real CNCF distribution registry (Debian ``docker-registry`` 2.8) on a free loopback port.

Decision: tests run the real server with a config file written into a temp dir (plain HTTP,
htpasswd Basic auth, token auth with :class:`TokenServer`, or TLS with a CA made by openssl), wait
until ``/v2/`` answers, and stop it by PID; images get into it with skopeo, never with our code,
so the state a test reads was written by an independent client.

Usage::

    with start_registry(tmp_path) as reg:                    # plain HTTP
        reg.push_layout(layout, "v1", "ns/repo", "v1", all_images=True)
    with start_registry(tmp_path, auth="token") as reg:      # starts its own token server
        reg.token_server.count()
    with start_registry(tmp_path, tls=True, auth="basic") as reg:
        reg.ca_file, reg.credentials

What skopeo 1.9.3 does with a multi-arch OCI layout (checked against this registry):

- ``--all`` (same as ``--multi-arch all``) pushes the OCI index and every child unchanged: the
  index digest in the registry equals the layout's.
- ``--all --format v2s2`` converts the OCI index to a Docker manifest list and each child to a
  Docker schema 2 manifest (config bytes and gzip layers are kept, so their digests stay; the
  manifest and list digests change).
- ``--preserve-digests`` together with ``--format v2s2`` fails ("Manifest list must be converted
  ... but we cannot modify it"); without ``--format`` it keeps OCI bytes as they are.
- Without ``--all``, skopeo picks the child for the host's platform (linux/amd64 here) and pushes
  only that manifest, under the tag, as a plain manifest.
- Uncompressed ``tar`` layers are gzipped on push unless ``--preserve-digests`` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.support.loopback import free_port
from tests.support.token_server import TokenServer

__all__ = ["Registry", "make_ca", "start_registry"]

Auth = Literal["none", "basic", "token"]

USERNAME = "testuser"
PASSWORD = "testpass"
_READY_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_SKOPEO_TIMEOUT = 60


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for ``127.0.0.1`` and ``localhost``, by openssl.

    Returns (ca.crt, server.crt, server.key). EC keys: generated in milliseconds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "ext.cnf"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\n"
    )
    commands: list[list[str | Path]]
    curve: list[str | Path] = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ]
    commands = [
        ["openssl", "req", "-x509", *curve, "-days", "2", "-subj", "/CN=containerdisks-test-ca",
         "-keyout", ca_key, "-out", ca_crt],
        ["openssl", "req", *curve, "-subj", "/CN=localhost", "-keyout", key, "-out", csr],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", crt],
    ]  # fmt: skip
    for command in commands:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    return ca_crt, crt, key


@dataclass
class Registry:
    """A running registry and what a test needs to reach it."""

    host: str  # "127.0.0.1:PORT"
    url: str  # "http://127.0.0.1:PORT" or "https://..."
    workdir: Path
    data_dir: Path
    config_path: Path
    log_path: Path
    auth: Auth
    ca_file: Path | None = None
    credentials: tuple[str, str] | None = None  # the test user, for "basic" and "token"
    token_server: TokenServer | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        """Everything the registry logged so far."""
        return self.log_path.read_text(errors="replace")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context trusting the test CA (TLS mode), else None."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None

    # -- skopeo ----------------------------------------------------------------------------

    def _skopeo_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REGISTRY_AUTH_FILE"] = str(self.workdir / "skopeo-auth.json")
        return env

    def _tls_args(self, side: Literal["src", "dest", ""]) -> list[str]:
        prefix = f"--{side}-" if side else "--"
        if self.ca_file is None:
            return [f"{prefix}tls-verify=false"]
        certs = self.workdir / "skopeo-certs"
        if not certs.exists():
            certs.mkdir()
            shutil.copy(self.ca_file, certs / "ca.crt")
        return [f"{prefix}tls-verify=true", f"{prefix}cert-dir={certs}"]

    def _creds_args(self, side: Literal["src", "dest", ""], anonymous: bool) -> list[str]:
        if anonymous or self.credentials is None:
            return []
        flag = f"--{side}-creds" if side else "--creds"
        return [f"{flag}={self.credentials[0]}:{self.credentials[1]}"]

    def _policy(self) -> Path:
        policy = self.workdir / "policy.json"
        if not policy.exists():
            policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        return policy

    def push_layout(
        self,
        layout: Path,
        ref_name: str,
        repository: str,
        tag: str,
        *,
        all_images: bool = False,
        docker_format: bool = False,
        preserve_digests: bool = False,
        anonymous: bool = False,
    ) -> None:
        """``skopeo copy oci:LAYOUT:REF_NAME docker://HOST/REPOSITORY:TAG``.

        ``all_images``: ``--all`` (push an index with every child, not only the host's platform);
        ``docker_format``: ``--format v2s2`` (Docker schema 2 / manifest list);
        ``preserve_digests``: ``--preserve-digests`` (cannot combine with ``docker_format`` for
        an index). See the module docstring for what skopeo 1.9.3 does with each.
        """
        command = ["skopeo", "--policy", str(self._policy()), "copy", "--quiet"]
        command += self._tls_args("dest") + self._creds_args("dest", anonymous)
        if all_images:
            command.append("--all")
        if docker_format:
            command += ["--format", "v2s2"]
        if preserve_digests:
            command.append("--preserve-digests")
        command += [f"oci:{layout}:{ref_name}", f"docker://{self.host}/{repository}:{tag}"]
        self._run(command)

    def pull(
        self,
        repository: str,
        reference: str,
        destination: str,
        *,
        all_images: bool = True,
        preserve_digests: bool = True,
        anonymous: bool = False,
    ) -> None:
        """``skopeo copy docker://HOST/REPOSITORY:REFERENCE DESTINATION`` (``oci:DIR:TAG`` or
        ``dir:DIR``): an independent client reading what was pushed.

        ``--all`` copies every child of an index; ``--preserve-digests`` refuses any change
        (no manifest conversion, no recompression), so what lands is byte-exact or nothing.
        """
        sep = "@" if ":" in reference else ":"
        command = ["skopeo", "--policy", str(self._policy()), "copy", "--quiet"]
        command += self._tls_args("src") + self._creds_args("src", anonymous)
        if all_images:
            command.append("--all")
        if preserve_digests:
            command.append("--preserve-digests")
        command += [f"docker://{self.host}/{repository}{sep}{reference}", destination]
        self._run(command)

    def list_tags(self, repository: str) -> list[str]:
        """``skopeo list-tags``: the tags an independent client sees."""
        command = ["skopeo", "--policy", str(self._policy()), "list-tags"]
        command += self._tls_args("") + self._creds_args("", anonymous=False)
        command.append(f"docker://{self.host}/{repository}")
        tags: list[str] = json.loads(self._run(command))["Tags"]
        return tags

    def upload_dirs(self, repository: str) -> list[Path]:
        """Upload sessions the registry still keeps for ``repository`` (filesystem storage).

        A live session has ``startedat`` and ``data``; a cancelled one (``DELETE``) loses both,
        but distribution 2.8.2 writes its ``hashstates/`` again after deleting, so an empty
        directory stays behind: those do not count.
        """
        uploads = self.data_dir / "docker/registry/v2/repositories" / repository / "_uploads"
        if not uploads.is_dir():
            return []
        return sorted(d for d in uploads.iterdir() if (d / "startedat").exists())

    def inspect_raw(self, repository: str, reference: str) -> bytes:
        """The manifest bytes skopeo reads for ``repository:reference`` (or ``@digest``)."""
        sep = "@" if ":" in reference else ":"
        command = ["skopeo", "--policy", str(self._policy()), "inspect", "--raw"]
        command += self._tls_args("") + self._creds_args("", anonymous=False)
        command.append(f"docker://{self.host}/{repository}{sep}{reference}")
        return self._run(command)

    def _run(self, command: list[str]) -> bytes:
        done = subprocess.run(
            command,
            capture_output=True,
            timeout=_SKOPEO_TIMEOUT,
            env=self._skopeo_env(),
            check=False,
        )
        if done.returncode != 0:
            shown = [a if "-creds=" not in a else a.split("=", 1)[0] + "=***" for a in command]
            raise RuntimeError(
                f"{' '.join(shown)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done.stdout


def _htpasswd(path: Path, username: str, password: str) -> None:
    done = subprocess.run(
        ["htpasswd", "-Bbn", username, password], capture_output=True, check=True, timeout=30
    )
    path.write_bytes(done.stdout)


def _config(
    *,
    port: int,
    data_dir: Path,
    auth: Auth,
    htpasswd: Path | None,
    token_server: TokenServer | None,
    tls: tuple[Path, Path] | None,
    delete: bool = True,
) -> dict[str, object]:
    http: dict[str, object] = {
        "addr": f"127.0.0.1:{port}",
        "secret": "not-so-secret-test",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, object] = {
        "version": "0.1",
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(data_dir)},
            "delete": {"enabled": delete},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth == "basic":
        assert htpasswd is not None
        config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(htpasswd)}}
    elif auth == "token":
        assert token_server is not None
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(token_server.cert_path),
            }
        }
    return config


def _wait_ready(registry: Registry, process: subprocess.Popen[bytes]) -> None:
    """Poll ``/v2/`` until any HTTP answer (200, or 401 with auth); bounded."""
    context = registry.ssl_context()
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited with {process.returncode}:\n{registry.log_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{registry.url}/v2/", timeout=1, context=context):
                return
        except urllib.error.HTTPError:
            return  # it answered: e.g. 401 from an auth mode
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"docker-registry not ready after {_READY_TIMEOUT}s:\n{registry.log_text()[-2000:]}"
            )
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT)


@contextmanager
def start_registry(
    workdir: Path,
    *,
    auth: Auth = "none",
    tls: bool = False,
    token_server: TokenServer | None = None,
    username: str = USERNAME,
    password: str = PASSWORD,
    delete: bool = True,
) -> Iterator[Registry]:
    """Run ``docker-registry serve`` in ``workdir`` until the block ends.

    ``delete=False`` turns ``storage.delete`` off: manifest deletes get 405 ``UNSUPPORTED``.

    ``auth="token"`` starts a :class:`TokenServer` (with ``username``/``password``) unless one is
    given; ``tls=True`` makes a CA with openssl and serves HTTPS for 127.0.0.1 and localhost.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    with ExitStack() as stack:
        htpasswd: Path | None = None
        if auth == "basic":
            htpasswd = workdir / "htpasswd"
            _htpasswd(htpasswd, username, password)
        if auth == "token" and token_server is None:
            token_server = stack.enter_context(
                TokenServer(workdir / "token", users={username: password})
            )
        ca_file: Path | None = None
        cert: tuple[Path, Path] | None = None
        if tls:
            ca_file, crt, key = make_ca(workdir / "tls")
            cert = (crt, key)
        log_path = workdir / "registry.log"
        config_path = workdir / "config.yml"  # JSON is YAML
        for attempt in range(3):
            port = free_port()
            config = _config(
                port=port,
                data_dir=data_dir,
                auth=auth,
                htpasswd=htpasswd,
                token_server=token_server,
                tls=cert,
                delete=delete,
            )
            config_path.write_text(json.dumps(config, indent=1))
            registry = Registry(
                host=f"127.0.0.1:{port}",
                url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
                workdir=workdir,
                data_dir=data_dir,
                config_path=config_path,
                log_path=log_path,
                auth=auth,
                ca_file=ca_file,
                credentials=(username, password) if auth != "none" else None,
                token_server=token_server if auth == "token" else None,
            )
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    ["docker-registry", "serve", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                )
            registry.process = process
            stack.callback(_stop, process)
            try:
                _wait_ready(registry, process)
            except RuntimeError:
                if attempt < 2 and "address already in use" in registry.log_text():
                    continue
                raise
            break
        yield registry
