"""`open_places` from registry specs: shared clients, layout places, one-line spec errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from containerdisks.registry.stores import Connection, open_places, same_place
from containerdisks.retry import RetryPolicy
from containerdisks.settings import ConfigError
from tests.support.registry import Registry, start_registry

CONNECTION = Connection(
    insecure_skip_tls=False,
    ca_file=None,
    connect_timeout=5,
    read_timeout=5,
    blob_min_rate=0,
    blob_rate_window=60,
    blob_deadline=60,
)


async def _no_sleep(_: float) -> None:
    return None


BACKOFF = RetryPolicy(attempts=2, sleep=_no_sleep)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("places") / "registry") as reg:
        yield reg


@pytest.fixture(autouse=True)
def no_auth_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials of the machine running the tests are looked up."""
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)


async def test_one_registry_host_is_one_client_for_source_and_target(registry: Registry) -> None:
    source, target = f"{registry.host}/staging", f"{registry.host}/prod"
    async with open_places(source, target, CONNECTION, BACKOFF) as (src, dst):
        assert src.store is dst.store
        assert (src.namespace, dst.namespace) == ("staging", "prod")
        assert (src.spec, dst.spec) == (source, target)
        assert dst.where("fedora", "41") == f"{registry.host}/prod/fedora:41"
        assert src.reload_credentials is not None
        assert not src.is_layout


async def test_layout_directories_are_layout_places(tmp_path: Path, registry: Registry) -> None:
    async with open_places(
        f"{registry.host}/cd", f"oci:{tmp_path / 'out'}", CONNECTION, BACKOFF
    ) as (src, dst):
        assert src.store is not dst.store
        assert dst.is_layout
        assert dst.reload_credentials is None
        assert dst.repo("fedora") == "fedora"
    assert same_place(f"oci:{tmp_path}/x/../out", f"oci:{tmp_path / 'out'}")
    assert not same_place(f"{registry.host}/a", f"{registry.host}/b")


@pytest.mark.parametrize(
    ("source", "target", "setting"),
    [
        ("Bad Host/x", "127.0.0.1:5000/x", "source_registry"),
        ("127.0.0.1:5000/x", "oci:", "target_registry"),
    ],
)
async def test_a_malformed_spec_names_its_setting(source: str, target: str, setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        async with open_places(source, target, CONNECTION, BACKOFF):
            pass
    assert str(caught.value).startswith(f"invalid setting {setting}: ")
