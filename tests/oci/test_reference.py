"""Names are split as docker splits them; the HTTP fallback rule is a pure function."""

from __future__ import annotations

import pytest

from containerdisks.oci import (
    ImageReference,
    InvalidReferenceError,
    RegistryNamespace,
    http_fallback_allowed,
    parse_image_reference,
    parse_registry,
)
from containerdisks.oci.reference import validate_repository, validate_tag

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "namespace", "api_host"),
    [
        ("quay.io/containerdisks", "quay.io", "containerdisks", "quay.io"),
        ("127.0.0.1:5000/ns/sub", "127.0.0.1:5000", "ns/sub", "127.0.0.1:5000"),
        ("localhost/x", "localhost", "x", "localhost"),
        ("localhost:5000/x", "localhost:5000", "x", "localhost:5000"),
        ("ghcr.io/org", "ghcr.io", "org", "ghcr.io"),
        ("containerdisks", "docker.io", "containerdisks", "registry-1.docker.io"),
        ("kubevirt/containerdisks", "docker.io", "kubevirt/containerdisks", "registry-1.docker.io"),
        ("docker.io/containerdisks", "docker.io", "containerdisks", "registry-1.docker.io"),
        ("index.docker.io/containerdisks", "docker.io", "containerdisks", "registry-1.docker.io"),
        ("Quay.IO/containerdisks", "quay.io", "containerdisks", "quay.io"),
        ("quay.io/containerdisks/", "quay.io", "containerdisks", "quay.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000", "", "127.0.0.1:5000"),
        ("[::1]:5000/ns", "[::1]:5000", "ns", "[::1]:5000"),
        ("registry.local/a_b/c-d/e.f", "registry.local", "a_b/c-d/e.f", "registry.local"),
    ],
)
def test_parse_registry_splits_like_docker(
    text: str, registry: str, namespace: str, api_host: str
) -> None:
    parsed = parse_registry(text)
    assert parsed == RegistryNamespace(registry, namespace)
    assert parsed.api_host == api_host


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" quay.io/x", "whitespace"),
        ("https://quay.io/x", "without a URL scheme"),
        ("quay.io/Containerdisks", "lowercase"),
        ("quay.io/a//b", "component ''"),
        ("127.0.0.1:99999/x", "invalid port"),
        ("127.0.0.1:/x", "invalid port"),
        ("quay..io/x", "invalid registry host"),
        ("[::1/x", "unclosed"),
        ("[zz]:5000/x", "not an IPv6 address"),
        ("oci:/dir", "invalid port"),
        ("quay.io/-x", "component '-x'"),
    ],
)
def test_parse_registry_rejects_with_the_bad_string_named(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_registry(text)
    assert isinstance(caught.value, ValueError)
    assert repr(text) in str(caught.value)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_namespace_makes_repository_paths() -> None:
    assert parse_registry("quay.io/containerdisks").repository("fedora") == "containerdisks/fedora"
    assert parse_registry("127.0.0.1:5000").repository("fedora") == "fedora"
    assert str(parse_registry("quay.io/containerdisks")) == "quay.io/containerdisks"
    with pytest.raises(InvalidReferenceError):
        parse_registry("quay.io/containerdisks").repository("Fedora")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "quay.io/containerdisks/fedora:41",
            ImageReference("quay.io", "containerdisks/fedora", "41"),
        ),
        (
            "127.0.0.1:5000/ns/sub/img:v1.0-rc_1",
            ImageReference("127.0.0.1:5000", "ns/sub/img", "v1.0-rc_1"),
        ),
        ("localhost/x", ImageReference("localhost", "x", "latest")),
        ("localhost:5000/x", ImageReference("localhost:5000", "x", "latest")),
        ("ubuntu", ImageReference("docker.io", "library/ubuntu", "latest")),
        ("ubuntu:22.04", ImageReference("docker.io", "library/ubuntu", "22.04")),
        ("kubevirt/fedora:41", ImageReference("docker.io", "kubevirt/fedora", "41")),
        (f"quay.io/cd/fedora@{DIGEST}", ImageReference("quay.io", "cd/fedora", None, DIGEST)),
        (f"quay.io/cd/fedora:41@{DIGEST}", ImageReference("quay.io", "cd/fedora", "41", DIGEST)),
        ("[::1]:5000/a/b:t", ImageReference("[::1]:5000", "a/b", "t")),
    ],
)
def test_parse_image_reference(text: str, expected: ImageReference) -> None:
    assert parse_image_reference(text) == expected


def test_image_reference_renders_and_picks_the_reference() -> None:
    by_digest = parse_image_reference(f"quay.io/cd/fedora:41@{DIGEST}")
    assert by_digest.reference == DIGEST
    assert str(by_digest) == f"quay.io/cd/fedora:41@{DIGEST}"
    by_tag = parse_image_reference("containerdisks/fedora:41")
    assert by_tag.reference == "41"
    assert by_tag.api_host == "registry-1.docker.io"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("quay.io/cd/fedora:", "invalid tag"),
        ("quay.io/cd/fedora:.x", "invalid tag"),
        ("quay.io/cd/fedora:" + "a" * 129, "invalid tag"),
        ("quay.io/cd/fedora@sha256:abc", "64 lowercase hex"),
        ("quay.io/cd/fedora@sha256:" + "AB" * 32, "64 lowercase hex"),
        ("quay.io/cd/fedora@md5:" + "ab" * 16, "unsupported digest algorithm"),
        ("quay.io/cd/fedora@nonsense", "<algorithm>:<hex>"),
        ("quay.io/:41", "missing repository"),
        ("quay.io/cd/Fedora:41", "lowercase"),
        ("quay.io/" + "a" * 256, "longer than 255"),
    ],
)
def test_parse_image_reference_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_image_reference(text)
    assert repr(text) in str(caught.value)
    assert reason in str(caught.value)


def test_repository_and_tag_validators_keep_valid_names_and_refuse_bad_ones() -> None:
    assert validate_repository("a/b-c/d__e") == "a/b-c/d__e"
    assert validate_tag("v1.2_3-x") == "v1.2_3-x"
    for bad in ("", "a/", "/a", "A", "a..b"):
        with pytest.raises(InvalidReferenceError):
            validate_repository(bad)
    for bad in ("", "-x", "a b", "a/b"):
        with pytest.raises(InvalidReferenceError):
            validate_tag(bad)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("localhost", True),
        ("localhost:5000", True),
        ("LOCALHOST:5000", True),
        ("registry.local", True),
        ("registry.local:443", True),
        ("10.1.2.3:5000", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("192.168.1.10:5000", True),
        ("172.32.0.1", False),
        ("11.0.0.1", False),
        ("8.8.8.8", False),
        ("[2001:db8::1]:5000", False),
        ("quay.io", False),
        ("registry.localdomain", False),
        ("local", False),
        ("notlocalhost:5000", False),
    ],
)
def test_http_fallback_only_for_local_and_private_hosts(host: str, allowed: bool) -> None:
    assert http_fallback_allowed(host) is allowed
