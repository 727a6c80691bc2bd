"""The plugin contract's helpers: per-arch parameters and template checks."""

from __future__ import annotations

import pytest
from pydantic import Field

from containerdisks.api import DiscoveryRequest, SourceError, SourceParams, check_placeholders


class Defaults(SourceParams):
    url: str = "https://example.org/{version}"


class Required(SourceParams):
    url: str = Field(description="no default")


def test_params_for_gives_the_arch_its_own_or_the_defaults() -> None:
    own = Defaults(url="https://mirror.example/{arch}")
    request = DiscoveryRequest("d", "1", ("x86_64", "aarch64"), {"x86_64": own})
    assert own is request.params_for("x86_64", Defaults)
    assert Defaults() == request.params_for("aarch64", Defaults)


def test_params_for_missing_or_foreign_parameters_name_the_entry_and_arch() -> None:
    request = DiscoveryRequest("d", "1", ("x86_64", "s390x"), {"x86_64": Defaults()})
    with pytest.raises(SourceError, match=r"^d: no Required for s390x$"):
        request.params_for("s390x", Required)
    with pytest.raises(SourceError, match=r"^d: Defaults for x86_64, not Required$"):
        request.params_for("x86_64", Required)


def test_check_placeholders() -> None:
    check_placeholders("url", "https://x/{version}/{arch}-\\d{2}", {"version", "arch"})
    with pytest.raises(ValueError, match=r"url uses unknown placeholder \{vesion\} .*; a hint"):
        check_placeholders("url", "https://x/{vesion}", {"version"}, "a hint")
