"""The `fedora` source on the real releases.json, via the real HttpUpstream and a local server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from containerdisks_builtin.fedora import (
    FedoraParams,
    FedoraSource,
    checksum_file_name,
    normalize_version,
)
from pydantic import ValidationError

from containerdisks.api import (
    ArchError,
    Artifact,
    DiscoveryRequest,
    Release,
    SourceError,
    UpstreamError,
)
from containerdisks.catalog import load_sources
from tests.support.sources import Serve
from tests.support.upstream_server import FIXTURES_DIR, put, tree_path, via

RELEASES = "https://getfedora.org/releases.json"
ARCHES = ("x86_64", "aarch64", "s390x")
DL = "https://download.fedoraproject.org/pub"
F40 = f"{DL}/fedora/linux/releases/40/Cloud"
F40_S390X = f"{DL}/fedora-secondary/releases/40/Cloud/s390x/images"
F39 = f"{DL}/fedora/linux/releases/39/Cloud"
F39_S390X = f"{DL}/fedora-secondary/releases/39/Cloud/s390x/images"
BETA = f"{DL}/fedora/linux/releases/test/41_Beta/Cloud"

# Golden values: medius's `artifacts/fedora` tests and the fixture itself.
F40_X86 = Artifact(
    "x86_64",
    f"{F40}/x86_64/images/Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2",
    "ac58f3c35b73272d5986fa6d3bc44fd246b45df4c334e99a07b3bbd00684adee",
    unique_tags=("40-1.14",),
    size=397475840,
)
F40_ARM = Artifact(
    "aarch64",
    f"{F40}/aarch64/images/Fedora-Cloud-Base-Generic.aarch64-40-1.14.qcow2",
    "ebdce26d861a9d15072affe1919ed753ec7015bd97b3a7d0d0df6a10834f7459",
    unique_tags=("40-1.14",),
    size=408289280,
)
F40_S390 = Artifact(
    "s390x",
    f"{F40_S390X}/Fedora-Cloud-Base-Generic.s390x-40-1.14.qcow2",
    "808226b31c6c61e08cde77fe7ba61d766f7528c857e7ae8553040c177cbda9a7",
    unique_tags=("40-1.14",),
    size=367915520,
)
F39_X86 = Artifact(
    "x86_64",
    f"{F39}/x86_64/images/Fedora-Cloud-Base-39-1.5.x86_64.qcow2",
    "ab5be5058c5c839528a7d6373934e0ce5ad6c8f80bd71ed3390032027da52f37",
    unique_tags=("39-1.5",),
    size=544604160,
)
F39_ARM = Artifact(
    "aarch64",
    f"{F39}/aarch64/images/Fedora-Cloud-Base-39-1.5.aarch64.qcow2",
    "765996d5b77481ca02d0ac06405641bf134ac920cfc1e60d981c64d7971162dc",
    unique_tags=("39-1.5",),
    size=560529408,
)
F39_S390 = Artifact(
    "s390x",
    f"{F39_S390X}/Fedora-Cloud-Base-39-1.5.s390x.qcow2",
    "36dec66c791c9d1225d74e8828fdb0976ad89f695e8e6f5c93269cafa8563907",
    unique_tags=("39-1.5",),
    size=517734400,
)
# The hand-edited "41 Beta" items: their placeholder checksums are valid lowercase hex
# ("a" and "b" 64 times), so they pass through as published; no unique tag, not stable.
BETA_X86 = Artifact(
    "x86_64",
    f"{BETA}/x86_64/images/Fedora-Cloud-Base-Generic-41_Beta-1.2.x86_64.qcow2",
    "a" * 64,
    size=500_000_000,
)
BETA_ARM = Artifact(
    "aarch64",
    f"{BETA}/aarch64/images/Fedora-Cloud-Base-Generic-41_Beta-1.2.aarch64.qcow2",
    "b" * 64,
    size=500_000_000,
)


def request(arches: tuple[str, ...] = ARCHES, **params: Any) -> DiscoveryRequest:
    p = FedoraParams.model_validate(params)
    return DiscoveryRequest(
        name="fedora", version=None, arches=arches, params=dict.fromkeys(arches, p)
    )


def releases_fixture() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((FIXTURES_DIR / "fedora/releases.json").read_text())
    return data


# -- discovery on the fixture ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arches", "params", "expected"),
    [
        pytest.param(
            ARCHES,
            {"exclude": ["40/s390x"]},
            [
                Release("40", (F40_X86, F40_ARM), newest_stable=True),
                Release("39", (F39_X86, F39_ARM, F39_S390)),
                Release("41-beta", (BETA_X86, BETA_ARM)),
            ],
            id="default-catalog-as-medius",
        ),
        pytest.param(
            ARCHES,
            {},
            [
                Release("40", (F40_X86, F40_ARM, F40_S390), newest_stable=True),
                Release("39", (F39_X86, F39_ARM, F39_S390)),
                Release("41-beta", (BETA_X86, BETA_ARM)),
            ],
            id="no-exclusion-raw-gather",
        ),
        pytest.param(
            ARCHES,
            {"exclude": ["41-beta/aarch64", "39/s390x"]},
            [
                Release("40", (F40_X86, F40_ARM, F40_S390), newest_stable=True),
                Release("39", (F39_X86, F39_ARM)),
                Release("41-beta", (BETA_X86,)),
            ],
            id="exclude-by-normalised-version",
        ),
        pytest.param(
            ARCHES,
            {"exclude": ["41 Beta/x86_64"]},
            [
                Release("40", (F40_X86, F40_ARM, F40_S390), newest_stable=True),
                Release("39", (F39_X86, F39_ARM, F39_S390)),
                Release("41-beta", (BETA_ARM,)),
            ],
            id="exclude-by-raw-version",
        ),
        pytest.param(
            ("s390x", "x86_64"),
            {},
            [
                Release("40", (F40_S390, F40_X86), newest_stable=True),
                Release("39", (F39_S390, F39_X86)),
                Release("41-beta", (BETA_X86,)),
            ],
            id="request-order-kept",
        ),
        pytest.param(
            ("s390x",),
            {"exclude": ["40/s390x"]},
            [Release("39", (F39_S390,), newest_stable=True)],
            id="version-without-arches-dropped",
        ),
        pytest.param(
            ARCHES,
            {"min_version": 40},
            [
                Release("40", (F40_X86, F40_ARM, F40_S390), newest_stable=True),
                Release("41-beta", (BETA_X86, BETA_ARM)),
            ],
            id="min-version-40",
        ),
        pytest.param(
            ARCHES,
            {"min_version": 41},
            [Release("41-beta", (BETA_X86, BETA_ARM))],
            id="only-a-pre-release-is-never-newest-stable",
        ),
        pytest.param(ARCHES, {"min_version": 42}, [], id="nothing-new-enough"),
        pytest.param(
            ("x86_64",),
            {"subvariant": "Cloud_Base_UKI"},
            [
                Release(
                    "40",
                    (
                        Artifact(
                            "x86_64",
                            f"{F40}/x86_64/images/Fedora-Cloud-Base-UEFI-UKI.x86_64-40-1.14.qcow2",
                            "e58fbd6c147c0eda6eca72491ddc74871c3c3db9b808dc4fcf0d313510c43d81",
                            unique_tags=("40-1.14",),
                            size=403767296,
                        ),
                    ),
                    newest_stable=True,
                )
            ],
            id="subvariant-selects-uki",
        ),
    ],
)
async def test_discover_fixture(
    serve: Serve, arches: tuple[str, ...], params: dict[str, Any], expected: list[Release]
) -> None:
    async with serve(("fedora/releases.json",)) as (server, upstream):
        actual = await FedoraSource().discover(request(arches, **params), upstream)
        assert expected == actual
        # One request for releases.json, however many arches; no image, no CHECKSUM file.
        expected_requests = [("GET", "/getfedora.org/releases.json")]
        assert expected_requests == [(r.method, r.path) for r in server.requests]


@pytest.mark.parametrize(
    ("version", "arch", "prefix", "suffix", "tag"),
    [
        (
            "40",
            "x86_64",
            "ac58f3c35b73272d5986fa6d3bc44fd246b45df4c334e99a07b3bbd00684adee",
            "",
            "40-1.14",
        ),
        ("40", "aarch64", "ebdce26d", "f7459", "40-1.14"),
        ("40", "s390x", "808226b3", "bda9a7", "40-1.14"),
        ("39", "x86_64", "ab5be505", "52f37", "39-1.5"),
        ("41-beta", "x86_64", "a" * 64, "", None),
        ("41-beta", "aarch64", "b" * 64, "", None),
    ],
)
async def test_medius_golden_values(
    serve: Serve, version: str, arch: str, prefix: str, suffix: str, tag: str | None
) -> None:
    async with serve(("fedora/releases.json",)) as (_, upstream):
        releases = await FedoraSource().discover(request(), upstream)
    found = {(r.version, a.arch): a for r in releases for a in r.artifacts}
    artifact = found[(version, arch)]
    assert isinstance(artifact, Artifact)
    assert artifact.checksum.startswith(prefix)
    assert artifact.checksum.endswith(suffix)
    assert ((tag,) if tag else ()) == artifact.unique_tags
    expected_order = [("40", True), ("39", False), ("41-beta", False)]
    assert expected_order == [(r.version, r.newest_stable) for r in releases]


async def test_subvariant_is_checked_not_file_order(serve: Serve) -> None:
    """medius took the first Cloud qcow2 and relied on Cloud_Base preceding Cloud_Base_UKI."""
    items = releases_fixture()
    uki_first = sorted(items, key=lambda i: i.get("subvariant") != "Cloud_Base_UKI")
    assert uki_first[0]["subvariant"] == "Cloud_Base_UKI"
    async with serve(("fedora/releases.json",)) as (server, upstream):
        put(server.root, RELEASES, json.dumps(uki_first))
        actual = await FedoraSource().discover(request(("x86_64", "aarch64")), upstream)
    expected = [
        Release("40", (F40_X86, F40_ARM), newest_stable=True),
        Release("39", (F39_X86, F39_ARM)),
        Release("41-beta", (BETA_X86, BETA_ARM)),
    ]
    assert expected == actual


def renumbered(items: list[dict[str, Any]], mapping: dict[str, str]) -> list[dict[str, Any]]:
    """The fixture's Cloud_Base qcow2 items (x86_64) with their versions renamed."""
    out = []
    for item in items:
        if item["version"] in mapping and item["arch"] == "x86_64":
            out.append({**item, "version": mapping[item["version"]]})
    return out


async def test_versions_sort_numerically(serve: Serve) -> None:
    """medius sorted version strings, so "100" came after "99"."""
    items = releases_fixture()
    data = (
        renumbered(items, {"40": "100", "39": "99"})
        + renumbered(items, {"41 Beta": "100 Beta"})
        + renumbered(items, {"41 Beta": "99 Beta"})
    )
    async with serve(("fedora/releases.json",)) as (server, upstream):
        put(server.root, RELEASES, json.dumps(data))
        releases = await FedoraSource().discover(request(("x86_64",)), upstream)
    expected = [("100", True), ("99", False), ("100-beta", False), ("99-beta", False)]
    assert expected == [(r.version, r.newest_stable) for r in releases]


async def test_version_that_is_no_tag_fails_visibly(serve: Serve) -> None:
    data = renumbered(releases_fixture(), {"41 Beta": "41 Beta (respin)"})
    async with serve(("fedora/releases.json",)) as (server, upstream):
        put(server.root, RELEASES, json.dumps(data))
        actual = await FedoraSource().discover(request(("x86_64", "aarch64")), upstream)
    message = f"{BETA_X86.url}: version '41 Beta (respin)' does not make a valid tag"
    expected = [Release("41-beta-(respin)", (ArchError("x86_64", message),))]
    assert expected == actual


# -- empty sha256: the CHECKSUM file beside the image ---------------------------------------------

CHECKSUM_40_X86 = f"{F40}/x86_64/images/Fedora-Cloud-40-1.14-x86_64-CHECKSUM"
CHECKSUM_40_ARM = f"{F40}/aarch64/images/Fedora-Cloud-40-1.14-aarch64-CHECKSUM"
CHECKSUM_BETA_X86 = f"{BETA}/x86_64/images/Fedora-Cloud-41_Beta-1.2-x86_64-CHECKSUM"


def clearsigned(lines: dict[str, tuple[str, int]]) -> str:
    """A CHECKSUM file in the layout Fedora publishes: PGP clearsigned BSD lines with sizes."""
    body = "".join(
        f"# {name}: {size} bytes\nSHA256 ({name}) = {hex_}\n"
        for name, (hex_, size) in lines.items()
    )
    return (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        + body
        + "-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n"
    )


def without_sha256(
    items: list[dict[str, Any]], links: dict[str, str | None]
) -> list[dict[str, Any]]:
    """Blank (`""`) or drop (None) the sha256 of the items with these links."""
    out = []
    for item in items:
        copy = dict(item)
        if item["link"] in links:
            value = links[item["link"]]
            if value is None:
                del copy["sha256"]
            else:
                copy["sha256"] = value
        out.append(copy)
    return out


X86_IMAGE = "Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2"
ARM_IMAGE = "Fedora-Cloud-Base-Generic.aarch64-40-1.14.qcow2"
BETA_IMAGE = "Fedora-Cloud-Base-Generic-41_Beta-1.2.x86_64.qcow2"
MISSING_40 = "no verifiable sha256 for {arch} image {link}: releases.json has none and"


@pytest.mark.parametrize(
    ("blanked", "files", "faults", "expected_40", "expected_beta_x86"),
    [
        pytest.param(
            {F40_X86.url: "", F40_ARM.url: None},
            {
                CHECKSUM_40_X86: clearsigned(
                    {
                        "Fedora-Cloud-Base-AmazonEC2.x86_64-40-1.14.raw.xz": ("1" * 64, 366518332),
                        X86_IMAGE: (F40_X86.checksum, 397475840),
                    }
                ),
                CHECKSUM_40_ARM: clearsigned({ARM_IMAGE: (F40_ARM.checksum.upper(), 408289280)}),
            },
            {},
            (F40_X86, F40_ARM),
            BETA_X86,
            id="empty-and-absent-sha256-from-checksum-files",
        ),
        pytest.param(
            {F40_X86.url: "", BETA_X86.url: ""},
            {CHECKSUM_BETA_X86: clearsigned({BETA_IMAGE: ("c" * 64, 500000000)})},
            {},
            (
                ArchError(
                    "x86_64",
                    MISSING_40.format(arch="x86_64", link=F40_X86.url)
                    + f" {CHECKSUM_40_X86}: HTTP 404 Not Found{via(CHECKSUM_40_X86)}",
                ),
                F40_ARM,
            ),
            Artifact("x86_64", BETA_X86.url, "c" * 64, size=500_000_000),
            id="checksum-file-missing-is-an-arch-error-pre-release-verified",
        ),
        pytest.param(
            {F40_X86.url: ""},
            {
                CHECKSUM_40_X86: clearsigned(
                    {"Fedora-Cloud-Base-GCE.x86_64-40-1.14.tar.gz": ("d" * 64, 1)}
                )
            },
            {},
            (
                ArchError(
                    "x86_64",
                    MISSING_40.format(arch="x86_64", link=F40_X86.url)
                    + f" {CHECKSUM_40_X86} does not list {X86_IMAGE}",
                ),
                F40_ARM,
            ),
            BETA_X86,
            id="checksum-file-without-the-image",
        ),
        pytest.param(
            {F40_X86.url: ""},
            {CHECKSUM_40_X86: "<html><body>Service Unavailable</body></html>\n"},
            {},
            (
                ArchError(
                    "x86_64",
                    MISSING_40.format(arch="x86_64", link=F40_X86.url)
                    + f" {CHECKSUM_40_X86}: malformed checksum file: no BSD checksum line found",
                ),
                F40_ARM,
            ),
            BETA_X86,
            id="checksum-file-is-an-html-page",
        ),
        pytest.param(
            {F40_X86.url: ""},
            {},
            {CHECKSUM_40_X86: 500},
            (
                ArchError(
                    "x86_64",
                    MISSING_40.format(arch="x86_64", link=F40_X86.url)
                    + f" {CHECKSUM_40_X86}: HTTP 500 Internal Server Error"
                    f" (gave up after 2 attempts){via(CHECKSUM_40_X86)}",
                ),
                F40_ARM,
            ),
            BETA_X86,
            id="checksum-file-server-error",
        ),
        pytest.param(
            {F40_X86.url: "not-a-checksum"},
            {},
            {},
            (
                ArchError(
                    "x86_64",
                    f"{F40_X86.url}: releases.json lists sha256 'not-a-checksum',"
                    " not 64 hex digits",
                ),
                F40_ARM,
            ),
            BETA_X86,
            id="malformed-sha256-is-not-replaced",
        ),
    ],
)
async def test_empty_sha256_uses_checksum_file(
    serve: Serve,
    blanked: dict[str, str | None],
    files: dict[str, str],
    faults: dict[str, int],
    expected_40: tuple[Artifact | ArchError, ...],
    expected_beta_x86: Artifact | ArchError,
) -> None:
    async with serve(("fedora/releases.json",)) as (server, upstream):
        put(server.root, RELEASES, json.dumps(without_sha256(releases_fixture(), blanked)))
        for url, text in files.items():
            put(server.root, url, text)
        for url, status in faults.items():
            server.respond(url, status, times=None)
        actual = await FedoraSource().discover(request(("x86_64", "aarch64")), upstream)
        expected_40 = tuple(
            ArchError(a.arch, server.resolve_notes(a.message)) if isinstance(a, ArchError) else a
            for a in expected_40
        )
        expected = [
            Release("40", expected_40, newest_stable=True),
            Release("39", (F39_X86, F39_ARM)),
            Release("41-beta", (expected_beta_x86, BETA_ARM)),
        ]
        assert expected == actual
        # Only metadata was read: releases.json once, each CHECKSUM file asked for once per
        # attempt; never an image.
        assert not [p for p in server.paths() if p.endswith(".qcow2")]
        assert server.count(RELEASES) == 1


@pytest.mark.parametrize(
    ("image", "arch", "expected"),
    [
        (
            "Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2",
            "x86_64",
            "Fedora-Cloud-40-1.14-x86_64-CHECKSUM",
        ),
        (
            "Fedora-Cloud-Base-Generic.s390x-40-1.14.qcow2",
            "s390x",
            "Fedora-Cloud-40-1.14-s390x-CHECKSUM",
        ),
        (
            "Fedora-Cloud-Base-39-1.5.aarch64.qcow2",
            "aarch64",
            "Fedora-Cloud-39-1.5-aarch64-CHECKSUM",
        ),
        (
            "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2",
            "x86_64",
            "Fedora-Cloud-41-1.4-x86_64-CHECKSUM",
        ),
        (
            "Fedora-Cloud-Base-Generic-41_Beta-1.2.x86_64.qcow2",
            "x86_64",
            "Fedora-Cloud-41_Beta-1.2-x86_64-CHECKSUM",
        ),
        (
            "Fedora-Cloud-Base-Generic.x86_64-41_Beta-1.2.qcow2",
            "x86_64",
            "Fedora-Cloud-41_Beta-1.2-x86_64-CHECKSUM",
        ),
        ("Fedora-Cloud-Base-Generic.x86_64.qcow2", "x86_64", None),
    ],
)
def test_checksum_file_name(image: str, arch: str, expected: str | None) -> None:
    assert expected == checksum_file_name(image, "Cloud", arch)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("40", "40"), ("41 Beta", "41-beta"), ("44 Beta", "44-beta"), ("42  RC 1", "42-rc-1")],
)
def test_normalize_version(raw: str, expected: str) -> None:
    assert expected == normalize_version(raw)


# -- failures of the whole source -----------------------------------------------------------------


def _item(**changes: str) -> dict[str, str]:
    item = {
        "version": "40",
        "arch": "x86_64",
        "link": "https://download.example/pub/fedora/40/Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2",
        "variant": "Cloud",
        "subvariant": "Cloud_Base",
        "sha256": "",
    }
    return {**item, **changes}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            "<html>Moved</html>",
            f"{RELEASES}: malformed JSON: Expecting value at line 1",
            id="not-json",
        ),
        pytest.param(
            '{"releases": []}',
            f"{RELEASES}: malformed releases.json: expected an array, got an object",
            id="not-an-array",
        ),
        pytest.param(
            json.dumps([{"version": "40", "arch": "x86_64", "link": "x", "variant": "Cloud"}]),
            f"{RELEASES}: malformed releases.json: item 0 field 'subvariant': Field required",
            id="item-missing-a-field",
        ),
        pytest.param(
            json.dumps(
                [
                    {
                        "version": "40",
                        "arch": "x86_64",
                        "link": "x",
                        "variant": "C",
                        "subvariant": "C",
                    },
                    {
                        "version": 41,
                        "arch": "x86_64",
                        "link": "x",
                        "variant": "C",
                        "subvariant": "C",
                    },
                ]
            ),
            f"{RELEASES}: malformed releases.json: item 1 field 'version':"
            " Input should be a valid string",
            id="version-not-a-string",
        ),
        pytest.param(
            json.dumps(["40"]),
            f"{RELEASES}: malformed releases.json: item 0: expected an object",
            id="item-not-an-object",
        ),
        pytest.param(
            json.dumps([_item(version="4" * 5000)]),
            f"{RELEASES}: malformed releases.json: item 0 field 'version': longer than 128 "
            "characters",
            id="5000-digit-version",
        ),
        pytest.param(
            json.dumps([_item(link=_item()["link"].replace(".qcow2", "\u0000.qcow2"))]),
            f"{RELEASES}: malformed releases.json: item 0 field 'link': contains a control "
            "character",
            id="nul-in-the-link",
        ),
        pytest.param(
            json.dumps([_item(arch="x86_64\u2028")]),
            f"{RELEASES}: malformed releases.json: item 0 field 'arch': contains a control "
            "character",
            id="line-separator-in-the-arch",
        ),
    ],
)
async def test_malformed_releases_json(serve: Serve, body: str, expected: str) -> None:
    async with serve(("fedora/releases.json",)) as (server, upstream):
        put(server.root, RELEASES, body)
        with pytest.raises(SourceError) as err:
            await FedoraSource().discover(request(), upstream)
    assert expected == str(err.value)
    assert "\n" not in str(err.value)


async def test_releases_json_unreachable(serve: Serve, tmp_path: Path) -> None:
    async with serve(("fedora/releases.json",)) as (server, upstream):
        tree_path(server.root, RELEASES).unlink()
        with pytest.raises(UpstreamError) as err:
            await FedoraSource().discover(request(), upstream)
    assert f"{RELEASES}: HTTP 404 Not Found{server.mirror_note(RELEASES)}" == str(err.value)


# -- parameters and registration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"exclude": ["40"]}, id="exclude-without-arch"),
        pytest.param({"exclude": ["40/s390x/x"]}, id="exclude-too-many-parts"),
        pytest.param({"min_version": "forty"}, id="min-version-not-a-number"),
        pytest.param({"arches": ["x86_64"]}, id="unknown-key"),
    ],
)
def test_invalid_params(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FedoraParams.model_validate(params)


def test_registered_as_a_plugin() -> None:
    source = load_sources()["fedora"]
    assert isinstance(source, FedoraSource)
    assert source.discovers_versions
    expected = {
        "kind": "fedora",
        "url": RELEASES,
        "min_version": 38,
        "variant": "Cloud",
        "subvariant": "Cloud_Base",
        "exclude": ["40/s390x"],
        "keys": "fedora-{major}",
    }
    described = source.describe(request(exclude=["40/s390x"]))
    # `containerdisks catalog` shows the parameters, the unique-tag rule and the rules.
    rules = described.pop("rules")
    assert "<version>-<compose>" == described.pop("unique_tag")
    assert expected == described
    assert any("CHECKSUM file" in r for r in rules)
    assert any("newest stable" in r for r in rules)
