"""The `debian` source on Debian's real per-image JSON files (tests/fixtures/upstream/debian).

Each fixture is served by the loopback upstream at its canonical URL and read through the real
HttpUpstream. Expected values are medius's golden values (reference §11: the full sha512 of
debian 13 amd64 and the unique tags of 11/12/13) and, for the other checksums, the fixture's
base64 digest decoded here with the standard library. The download URL is the deliberate
difference from medius: the versioned file of `data.ref`, not `latest/`.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from containerdisks_builtin.debian import DebianParams, DebianSource, sha512_hex
from pydantic import ValidationError

from containerdisks.api import ArchError, Artifact, DiscoveryRequest, Release, SourceError
from containerdisks.catalog import load_sources
from tests.support.sources import Serve
from tests.support.upstream_server import FIXTURE_URLS, FIXTURES_DIR, put, via

ARCHES = ("x86_64", "aarch64")
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
CODENAME = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
IMAGES = "https://cloud.debian.org/images/cloud/"
GOLDEN_13_AMD64 = (
    "d76122c87c940d1ab9334f4307c98c01dc42f0b49a20cddf278d59b92d34ab63"
    "d05ac1f40dffda3d2d32e381f097706eee6ccbf79a596bfb2cbb3d83c635ae35"
)


def fixture(version: str, arch: str) -> str:
    return f"debian/debian-{version}-genericcloud-{GOARCH[arch]}.json"


def json_url(version: str, arch: str) -> str:
    return FIXTURE_URLS[fixture(version, arch)]


FIXTURES = tuple(fixture(v, a) for v in CODENAME for a in ARCHES)


def request(
    version: str = "13", arches: tuple[str, ...] = ARCHES, **params: Any
) -> DiscoveryRequest:
    p = DebianParams.model_validate(params)
    return DiscoveryRequest(
        name="debian", version=version, arches=arches, params=dict.fromkeys(arches, p)
    )


def fixture_digest(version: str, arch: str) -> str:
    """The qcow2 item's sha512 as hex, decoded here independently of the source."""
    doc = json.loads((FIXTURES_DIR / fixture(version, arch)).read_text())
    (item,) = (
        i
        for i in doc["items"]
        if i["metadata"]["labels"].get("upload.cloud.debian.org/image-format") == "qcow2"
    )
    encoded = item["metadata"]["annotations"]["cloud.debian.org/digest"].removeprefix("sha512:")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4)).hex()


# One row per fixture: the versioned image file, the golden checksum's first/last digits (the
# full value for 13 amd64), and the unique tag.
ROWS = [
    ("11", "x86_64", "bullseye/20250303-2040/debian-11-genericcloud-amd64-20250303-2040.qcow2"),
    ("11", "aarch64", "bullseye/20250303-2040/debian-11-genericcloud-arm64-20250303-2040.qcow2"),
    ("12", "x86_64", "bookworm/20250210-2019/debian-12-genericcloud-amd64-20250210-2019.qcow2"),
    ("12", "aarch64", "bookworm/20250210-2019/debian-12-genericcloud-arm64-20250210-2019.qcow2"),
    ("13", "x86_64", "trixie/20250814-2204/debian-13-genericcloud-amd64-20250814-2204.qcow2"),
    ("13", "aarch64", "trixie/20250814-2204/debian-13-genericcloud-arm64-20250814-2204.qcow2"),
]
TAGS = {"11": "11-20250303-2040", "12": "12-20250210-2019", "13": "13-20250814-2204"}


@pytest.mark.parametrize(("version", "arch", "ref"), ROWS)
async def test_selects_like_medius(serve: Serve, version: str, arch: str, ref: str) -> None:
    async with serve(FIXTURES) as (_, upstream):
        (release,) = await DebianSource().discover(request(version), upstream)
    (actual,) = (a for a in release.artifacts if a.arch == arch)
    expected = Artifact(
        arch=arch,
        url=IMAGES + ref,
        checksum=fixture_digest(version, arch),
        algorithm="sha512",
        unique_tags=(TAGS[version],),
    )
    assert expected == actual
    # medius downloaded the moving file beside the JSON; we take the versioned one it names.
    medius_url = json_url(version, arch).removesuffix(".json") + ".qcow2"
    assert f"/{CODENAME[version]}/latest/" in medius_url
    assert actual.url.rsplit("/", 1)[1].startswith(
        medius_url.rsplit("/", 1)[1].removesuffix(".qcow2")
    )


async def test_sha512_path_debian_13_amd64(serve: Serve) -> None:
    """medius's golden value: base64 sha512 of the qcow2 item, hex, algorithm sha512."""
    async with serve(FIXTURES) as (_, upstream):
        (release,) = await DebianSource().discover(request("13", ("x86_64",)), upstream)
    expected = [
        Release(
            "13",
            (
                Artifact(
                    "x86_64",
                    IMAGES + ROWS[4][2],
                    GOLDEN_13_AMD64,
                    algorithm="sha512",
                    unique_tags=("13-20250814-2204",),
                ),
            ),
        )
    ]
    assert expected == [release]
    assert 128 == len(release.artifacts[0].checksum)  # type: ignore[union-attr]


async def test_one_request_per_json_per_pass(serve: Serve) -> None:
    source = DebianSource()
    async with serve(FIXTURES) as (server, upstream):
        for _ in range(2):
            for version in CODENAME:
                await source.discover(request(version), upstream)
        # Every JSON once, nothing else (no image: discovery never downloads).
        assert [1] * len(FIXTURES) == [server.count(FIXTURE_URLS[f]) for f in FIXTURES]
        assert len(FIXTURES) == len(server.requests)
        # A later pass asks conditionally and reuses the body on 304.
        upstream.new_pass()
        await source.discover(request("13"), upstream)
        assert [200, 304] == [
            r.status
            for r in server.requests
            if r.path.endswith("debian-13-genericcloud-amd64.json")
        ]


@pytest.mark.parametrize(
    ("digest", "expected"),
    [
        pytest.param(
            "sha512:12EiyHyUDRq5M09DB8mMAdxC8LSaIM3fJ41ZuS00q2PQWsH0Df/aPS0y44Hwl3Bu7mzL95pZa"
            "/ssuz2DxjWuNQ",
            GOLDEN_13_AMD64,
            id="unpadded",
        ),
        pytest.param(
            "sha512:12EiyHyUDRq5M09DB8mMAdxC8LSaIM3fJ41ZuS00q2PQWsH0Df/aPS0y44Hwl3Bu7mzL95pZa"
            "/ssuz2DxjWuNQ==",
            GOLDEN_13_AMD64,
            id="padded",
        ),
        pytest.param("sha256:abcd", "is not sha512:<base64>", id="other-algorithm"),
        pytest.param("12EiyHyU", "is not sha512:<base64>", id="no-prefix"),
        pytest.param("sha512:12Ei*yHy", "is not valid base64", id="bad-character"),
        pytest.param("sha512:12EiyHyUD", "is not valid base64", id="impossible-length"),
        pytest.param("sha512:" + "A" * 43, "decodes to 32 bytes, not 64", id="a-sha256"),
        pytest.param("sha512:", "decodes to 0 bytes, not 64", id="empty"),
    ],
)
def test_sha512_hex(digest: str, expected: str) -> None:
    if re.fullmatch(r"[0-9a-f]{128}", expected):
        assert expected == sha512_hex(digest)
    else:
        with pytest.raises(ValueError, match=re.escape(expected)):
            sha512_hex(digest)


# -- failures: one line per arch, naming the URL and the reason -----------------------------------


def qcow2_item(doc: dict[str, Any]) -> dict[str, Any]:
    return next(
        i
        for i in doc["items"]
        if i["metadata"]["labels"].get("upload.cloud.debian.org/image-format") == "qcow2"
    )


def edited(change: Any) -> str:
    doc = json.loads((FIXTURES_DIR / fixture("13", "aarch64")).read_text())
    change(doc)
    return json.dumps(doc)


def _drop_qcow2(doc: dict[str, Any]) -> None:
    doc["items"] = [i for i in doc["items"] if i is not qcow2_item(doc)]


def _set(path: tuple[str, ...], value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        node = qcow2_item(doc)
        for key in path[:-1]:
            node = node[key]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return change


ARM = json_url("13", "aarch64")
DIGEST = ("metadata", "annotations", "cloud.debian.org/digest")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "<html>gone</html>", f"{ARM}: malformed JSON: Expecting value at line 1", id="not-json"
        ),
        pytest.param(
            "[1, 2]",
            f"{ARM}: malformed image metadata: expected an object with an 'items' array",
            id="not-an-object",
        ),
        pytest.param(
            edited(_drop_qcow2),
            f"{ARM}: no item labelled upload.cloud.debian.org/image-format=qcow2",
            id="no-qcow2-item",
        ),
        pytest.param(
            edited(_set(DIGEST, "sha512:not*base64")),
            f"{ARM}: digest 'sha512:not*base64' is not valid base64",
            id="bad-base64",
        ),
        pytest.param(
            edited(_set(DIGEST, "sha256:" + "A" * 43)),
            f"{ARM}: digest 'sha256:{'A' * 43}' is not sha512:<base64>",
            id="not-sha512",
        ),
        pytest.param(
            edited(_set(DIGEST, None)),
            f"{ARM}: the qcow2 item has no cloud.debian.org/digest annotation",
            id="no-digest",
        ),
        pytest.param(
            edited(_set(("metadata", "labels", "cloud.debian.org/version"), None)),
            f"{ARM}: the qcow2 item has no cloud.debian.org/version label",
            id="no-version-label",
        ),
        pytest.param(
            edited(_set(("metadata", "labels", "cloud.debian.org/version"), "2025 08")),
            f"{ARM}: unique tag '13-2025 08' (from the cloud.debian.org/version label)"
            " is not a valid tag",
            id="version-label-no-tag",
        ),
        pytest.param(
            edited(_set(("data", "ref"), None)),
            f"{ARM}: the qcow2 item has no data.ref",
            id="no-data-ref",
        ),
        pytest.param(
            edited(_set(("data", "ref"), "https://elsewhere.example/x.qcow2")),
            f"{ARM}: the qcow2 item has data.ref 'https://elsewhere.example/x.qcow2',"
            " not a relative path",
            id="absolute-data-ref",
        ),
        pytest.param(
            edited(_set(("data", "ref"), "trixie/../../etc/x.qcow2")),
            f"{ARM}: the qcow2 item has data.ref 'trixie/../../etc/x.qcow2', not a relative path",
            id="dot-dot-data-ref",
        ),
    ],
)
async def test_bad_metadata_fails_that_arch(serve: Serve, body: str, expected: str) -> None:
    async with serve(FIXTURES) as (server, upstream):
        put(server.root, ARM, body)
        (release,) = await DebianSource().discover(request("13"), upstream)
    assert isinstance(release.artifacts[0], Artifact)  # x86_64 is unaffected
    assert [ArchError("aarch64", expected)] == list(release.artifacts[1:])
    assert "\n" not in expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(404, f"{ARM}: HTTP 404 Not Found{via(ARM)}", id="missing-arch"),
        pytest.param(
            503,
            f"{ARM}: HTTP 503 Service Unavailable (gave up after 2 attempts){via(ARM)}",
            id="server-error",
        ),
    ],
)
async def test_http_error_fails_that_arch(serve: Serve, status: int, expected: str) -> None:
    async with serve(FIXTURES) as (server, upstream):
        server.respond(ARM, status, times=None)
        (release,) = await DebianSource().discover(request("13"), upstream)
    assert isinstance(release.artifacts[0], Artifact)
    expected = server.resolve_notes(expected)
    assert [ArchError("aarch64", expected)] == list(release.artifacts[1:])


async def test_version_without_codename_fails_the_entry(serve: Serve) -> None:
    async with serve(FIXTURES) as (server, upstream):
        with pytest.raises(SourceError) as err:
            await DebianSource().discover(request("14"), upstream)
        assert [] == server.requests
    assert "debian:14: no Debian codename for version '14' (codenames: 11, 12, 13)" == str(
        err.value
    )


async def test_codenames_are_a_parameter(serve: Serve) -> None:
    """A new release is a catalog change: YAML's integer keys are read as version strings."""
    forky = "https://cloud.debian.org/images/cloud/forky/latest/debian-14-genericcloud-amd64.json"
    async with serve(FIXTURES) as (server, upstream):
        body = (FIXTURES_DIR / fixture("13", "x86_64")).read_text()
        put(server.root, forky, body.replace("debian-13-", "debian-14-"))
        (release,) = await DebianSource().discover(
            request("14", ("x86_64",), codenames={14: "forky"}), upstream
        )
    (artifact,) = release.artifacts
    assert isinstance(artifact, Artifact)
    assert ("14-20250814-2204",) == artifact.unique_tags
    assert IMAGES + "trixie/20250814-2204/debian-14-genericcloud-amd64-20250814-2204.qcow2" == (
        artifact.url
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param(
            {"url": "https://x/{release}.json"}, "unknown placeholder {release}", id="url"
        ),
        pytest.param({"download_base": "https://x/images"}, "must end with '/'", id="base"),
        pytest.param({"codename": "trixie"}, "Extra inputs are not permitted", id="unknown-key"),
    ],
)
def test_invalid_params(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        DebianParams.model_validate(params)


def test_registered_as_a_plugin() -> None:
    source = load_sources()["debian"]
    assert isinstance(source, DebianSource)
    assert not source.discovers_versions
    described = source.describe(request())
    assert "{version}-<cloud.debian.org/version label>" == described["unique_tag"]
    assert {
        "kind": "debian",
        "codenames": CODENAME,
        "url": "https://cloud.debian.org/images/cloud/{codename}/latest/"
        "debian-{version}-genericcloud-{goarch}.json",
        "download_base": IMAGES,
        "image_format": "qcow2",
    } == {k: v for k, v in described.items() if k not in ("unique_tag", "rules")}
