"""Shared fixtures: real registries on loopback (see tests/support/registry.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from containerdisks.oci import redact
from tests.support.cli import UNSIGNED
from tests.support.disks import fedora_tree
from tests.support.registry import Registry, start_registry
from tests.support.upstream_server import UpstreamServer

pytest_plugins = ["pytester"]  # tests/oci/test_leak_guard.py runs a small inner session


@pytest.fixture(autouse=True, scope="session")
def _unsigned_fixtures() -> Iterator[None]:
    """The loopback upstream fixtures are unsigned copies of the distributions' files, so the
    suite runs with `upstream_signatures: false` (tests/support/cli.py's `clean_env` too);
    tests/upstream/ turns signatures on, with keys the tests make."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(*UNSIGNED)
        yield


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Secrets a test registers are masked in its own outputs only (one process runs them all)."""
    yield
    redact.forget_all()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry, no auth, empty; one per test."""
    with start_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry with htpasswd Basic auth (``reg.credentials``)."""
    with start_registry(tmp_path / "registry", auth="basic") as reg:
        yield reg


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry with token auth; ``reg.token_server`` counts token requests."""
    with start_registry(tmp_path / "registry", auth="token") as reg:
        yield reg


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[Registry]:
    """An HTTPS registry with a self-signed CA (``reg.ca_file``), no auth."""
    with start_registry(tmp_path / "registry", tls=True) as reg:
        yield reg


@pytest.fixture(scope="session")
def session_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry shared by the whole session: use repositories of your own."""
    with start_registry(tmp_path_factory.mktemp("session-registry")) as reg:
        yield reg


@pytest.fixture
def fedora(tmp_path: Path) -> Iterator[tuple[UpstreamServer, dict[tuple[str, str], bytes]]]:
    """A loopback upstream serving the real releases.json, pointed at real tiny qcow2 images
    (one per Fedora version and arch); yields the server and the disks by (version, arch)."""
    root = tmp_path / "up"
    disks = fedora_tree(root)
    with UpstreamServer(root) as srv:
        yield srv, disks


@pytest.fixture
def no_delete_registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry with deletes disabled (`storage.delete.enabled: false`)."""
    with start_registry(tmp_path / "registry-no-delete", delete=False) as reg:
        yield reg
