"""The `static` source: images pinned in the catalog (medius's test-only cirros entry)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from containerdisks_builtin.static import StaticParams, StaticSource
from pydantic import ValidationError

from containerdisks.api import Artifact, Release
from containerdisks.catalog import load_catalog, load_sources
from containerdisks.settings import ConfigError
from tests.support.sources import Serve

CIRROS = "https://download.cirros-cloud.net/0.6.1/cirros-0.6.1-{}-disk.img"
AMD64 = "cc704ab14342c1c8a8d91b66a7fc611d921c8b8f1aaf4695f9d6463d913fa8d1"
ARM64 = "db9420c481c11dee17860aa46fb1a3efa05fa4fb152726d6344e24da03cb0ccf"


def entry(**source: Any) -> dict[str, Any]:
    return {
        "entries": [
            {
                "name": "cirros",
                "version": "6.1",
                "arches": ["x86_64", "aarch64"],
                "skip_unless_focused": True,
                "source": {
                    "kind": "static",
                    "per_arch": {
                        "x86_64": {"url": CIRROS.format("x86_64"), "checksum": AMD64},
                        "aarch64": {"url": CIRROS.format("aarch64"), "checksum": ARM64},
                    },
                    **source,
                },
            }
        ]
    }


async def test_cirros_as_medius_pins_it(serve: Serve) -> None:
    (bound,) = load_catalog(entry()).items
    async with serve(()) as (server, upstream):
        releases = await StaticSource().discover(bound.request, upstream)
        assert [] == server.requests  # nothing is asked upstream
    expected = [
        Release(
            "6.1",
            (
                Artifact("x86_64", CIRROS.format("x86_64"), AMD64),
                Artifact("aarch64", CIRROS.format("aarch64"), ARM64),
            ),
        )
    ]
    assert expected == releases


async def test_url_template_and_compression(serve: Serve) -> None:
    config = entry()
    config["entries"][0]["source"] = {
        "kind": "static",
        "url": "https://example.org/{version}/disk-{goarch}.qcow2.xz",
        "checksum": "ab" * 64,
        "algorithm": "sha512",
    }
    (bound,) = load_catalog(config).items
    async with serve(()) as (_, upstream):
        (release,) = await StaticSource().discover(bound.request, upstream)
    assert [
        Artifact(
            "x86_64", "https://example.org/6.1/disk-amd64.qcow2.xz", "ab" * 64, "sha512", "xz"
        ),
        Artifact(
            "aarch64", "https://example.org/6.1/disk-arm64.qcow2.xz", "ab" * 64, "sha512", "xz"
        ),
    ] == list(release.artifacts)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({"url": "https://x/"}, "checksum\n  Field required", id="no-checksum"),
        pytest.param(
            {"url": "https://x/", "checksum": AMD64.upper()},
            "is not 64 lowercase hex digits (sha256)",
            id="uppercase",
        ),
        pytest.param(
            {"url": "https://x/", "checksum": AMD64, "algorithm": "sha512"},
            "is not 128 lowercase hex digits (sha512)",
            id="wrong-length",
        ),
        pytest.param(
            {"url": "https://x/{release}", "checksum": AMD64},
            "url uses unknown placeholder {release}",
            id="placeholder",
        ),
    ],
)
def test_invalid_params(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        StaticParams.model_validate(params)


def test_a_bad_pin_is_a_configuration_error() -> None:
    config = entry()
    config["entries"][0]["source"]["per_arch"]["aarch64"]["checksum"] = "db9420"
    with pytest.raises(ConfigError, match=r"cirros:6.1\).*\(aarch64\).*'db9420' is not 64"):
        load_catalog(config)


def test_registered_as_a_plugin() -> None:
    source = load_sources()["static"]
    assert isinstance(source, StaticSource)
    (bound,) = load_catalog(entry()).items
    assert {
        "kind": "static",
        "url": CIRROS.format("x86_64"),
        "checksum": AMD64,
        "algorithm": "sha256",
        "compression": "auto",
        "unique_tag": None,
    } == source.describe(bound.request)
