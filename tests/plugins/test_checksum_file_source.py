"""The declarative `checksum-file` source on the real upstream checksum files.

Every distribution that publishes a checksum file is shown here with the parameters its catalog
entry will use, through the real HttpUpstream and a loopback server. Expected checksums are the
golden values of medius's tests (prefix/suffix where they are abbreviated) and the full value read
from the fixture with plain string operations, not with the parser under test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from containerdisks_builtin.checksum_file import ChecksumFileParams, ChecksumFileSource
from pydantic import ValidationError

from containerdisks.api import (
    GOARCH,
    ArchError,
    Artifact,
    DiscoveryRequest,
    Release,
    SourceError,
)
from containerdisks.catalog import load_sources
from tests.support.sources import Serve
from tests.support.upstream_server import FIXTURE_URLS, FIXTURES_DIR, put, via

ARCHES = ("x86_64", "aarch64", "s390x")


@dataclass(frozen=True)
class Entry:
    """A catalog entry as the default catalog will write it, and the fixtures it reads."""

    version: str
    arches: tuple[str, ...]
    source: dict[str, Any]
    fixtures: tuple[str, ...]
    per_arch: dict[str, dict[str, Any]] = field(default_factory=dict)

    def request(self, name: str = "test", **changes: Any) -> DiscoveryRequest:
        """What the core hands the source: parameters merged per arch (`changes` last)."""
        params = {
            arch: ChecksumFileParams.model_validate(
                {**self.source, **self.per_arch.get(arch, {}), **changes}
            )
            for arch in self.arches
        }
        return DiscoveryRequest(name=name, version=self.version, arches=self.arches, params=params)


CENTOS = {
    "url": "https://cloud.centos.org/centos/{version}-stream/{arch}/images/CHECKSUM",
    "format": "bsd",
    "match": r"CentOS-Stream-GenericCloud-{version}-(?P<tag>.+)\.{arch}\.qcow2",
    "pick": "last",
    "unique_tag": "{version}-{tag}",
}
ALMA = {
    "url": "https://repo.almalinux.org/almalinux/{version}/cloud/{arch}/images/CHECKSUM",
    "format": "gnu",
    "match": r"^AlmaLinux-{version}-GenericCloud-(?P<tag>\d+\.\d+-.+)\.{arch}\.qcow2$",
    "unique_tag": "{tag}",
}
UBUNTU = {
    "url": "https://cloud-images.ubuntu.com/releases/{version}/release/SHA256SUMS",
    "format": "gnu",
    "match": r"ubuntu-{version}-server-cloudimg-{goarch}\.img",
}
LEAP_DIR = "https://download.opensuse.org/distribution/leap/{version}/appliances"
LEAP15 = {
    "url": LEAP_DIR + "/openSUSE-Leap-{version}-Minimal-VM.{arch}-Cloud.qcow2.sha256",
    "format": "gnu",
    "match": r"openSUSE-Leap-{version}-Minimal-VM\.{arch}-Cloud\.qcow2",
}
LEAP16 = {
    "url": LEAP_DIR + "/Leap-{version}-Minimal-VM.{arch}-Cloud.qcow2.sha256",
    "format": "gnu",
    "match": r"Leap-{version}-Minimal-VM\.{arch}-Cloud\.qcow2",
}
LEAP16_S390X = {
    "url": LEAP_DIR + "/Leap-{version}-Minimal-VM.s390x-s390x-Cloud.qcow2.sha256",
    "match": r"Leap-{version}-Minimal-VM\.s390x-s390x-Cloud\.qcow2",
}
TW = "https://download.opensuse.org/tumbleweed/appliances/SHA256SUMS"
TW_Z = "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/SHA256SUMS"
TUMBLEWEED = {
    "url": TW,
    "format": "gnu",
    "match": r"openSUSE-Tumbleweed-Minimal-VM\.{arch}-1\.0\.0-Cloud-Snapshot\d+\.qcow2",
}
TUMBLEWEED_S390X = {
    "url": TW_Z,
    "match": r"openSUSE-Tumbleweed-Minimal-VM\.{arch}-16\.0\.0-s390x-Cloud-Snapshot\d+\.qcow2",
}
MICROOS = {
    "url": TW,
    "format": "gnu",
    "match": r"openSUSE-MicroOS\.{arch}-16\.0\.0-OpenStack-Cloud-Snapshot\d+\.qcow2",
}
MICROOS_S390X = {
    "url": TW_Z,
    "match": r"openSUSE-MicroOS\.{arch}-16\.0\.0-s390x-Cloud-Snapshot\d+\.qcow2",
}


def _files(prefix: str, arches: tuple[str, ...] = ARCHES) -> tuple[str, ...]:
    return tuple(f"{prefix}-{a}.checksum" for a in arches)


ENTRIES = {
    "centos-stream:9": Entry("9", ARCHES, CENTOS, _files("centos-stream/centos-stream9")),
    "centos-stream:10": Entry("10", ARCHES, CENTOS, _files("centos-stream/centos-stream10")),
    "almalinux:9": Entry("9", ARCHES, ALMA, _files("almalinux/almalinux9")),
    "almalinux:10": Entry("10", ARCHES, ALMA, _files("almalinux/almalinux10")),
    "ubuntu:22.04": Entry("22.04", ARCHES, UBUNTU, ("ubuntu/SHA256SUM",)),
    "opensuse-leap:15.5": Entry(
        "15.5",
        ("x86_64", "aarch64"),
        LEAP15,
        tuple(
            f"opensuse-leap/openSUSE-Leap-15.5-Minimal-VM.{a}-Cloud.qcow2.sha256"
            for a in ARCHES[:2]
        ),
    ),
    "opensuse-leap:15.6": Entry(
        "15.6",
        ("x86_64", "aarch64"),
        LEAP15,
        tuple(
            f"opensuse-leap/openSUSE-Leap-15.6-Minimal-VM.{a}-Cloud.qcow2.sha256"
            for a in ARCHES[:2]
        ),
    ),
    "opensuse-leap:16.0": Entry(
        "16.0",
        ARCHES,
        LEAP16,
        (
            "opensuse-leap/Leap-16.0-Minimal-VM.x86_64-Cloud.qcow2.sha256",
            "opensuse-leap/Leap-16.0-Minimal-VM.aarch64-Cloud.qcow2.sha256",
            "opensuse-leap/Leap-16.0-Minimal-VM.s390x-s390x-Cloud.qcow2.sha256",
        ),
        per_arch={"s390x": LEAP16_S390X},
    ),
    "opensuse-tumbleweed:1.0.0": Entry(
        "1.0.0",
        ("x86_64", "s390x"),
        TUMBLEWEED,
        (
            "opensuse-tumbleweed/tumbleweed.SHA256SUM",
            "opensuse-tumbleweed/tumbleweed-s390x.SHA256SUM",
        ),
        per_arch={"s390x": TUMBLEWEED_S390X},
    ),
    "opensuse-microos:16.0.0": Entry(
        "16.0.0",
        ("x86_64", "s390x"),
        MICROOS,
        ("opensuse-microos/microos.SHA256SUM", "opensuse-microos/microos-s390x.SHA256SUM"),
        per_arch={"s390x": MICROOS_S390X},
    ),
}


def listed(fixture: str) -> dict[str, str]:
    """`name -> hex` of a fixture, by splitting lines on whitespace (independent of the parser)."""
    out = {}
    for line in (FIXTURES_DIR / fixture).read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "SHA256" and words[2] == "=":  # BSD
            out[words[1][1:-1]] = words[3]
        elif len(words) == 2 and len(words[0]) == 64:  # GNU
            out[words[1].lstrip("*")] = words[0]
    return out


# -- medius's selection rules (its `artifacts/*` packages), reimplemented to compare with ----


def medius_pick(entry_id: str, arch: str, names: list[str]) -> str:
    distro, version = entry_id.split(":")
    if distro == "centos-stream":
        prefix = f"CentOS-Stream-GenericCloud-{version}"
        return sorted(n for n in names if n.startswith(prefix) and n.endswith("qcow2"))[-1]
    if distro == "almalinux":
        rx = re.compile(rf"^AlmaLinux-{version}-GenericCloud-\d+\.\d+-.+\.{arch}\.qcow2$")
        return sorted(n for n in names if rx.match(n))[-1]
    if distro == "ubuntu":
        name = f"ubuntu-{version}-server-cloudimg-{GOARCH[arch]}.img"
        assert name in names
        return name
    if distro == "opensuse-leap":
        # medius downloads a fixed URL; the .sha256 file holds one line for it.
        s390x = "s390x-s390x" if arch == "s390x" else arch
        stem = "openSUSE-Leap" if version.startswith("15.") else "Leap"
        return f"{stem}-{version}-Minimal-VM.{s390x}-Cloud.qcow2"
    if distro in ("opensuse-tumbleweed", "opensuse-microos"):
        if distro == "opensuse-tumbleweed":
            ver = r"1\.0\.0" if arch == "x86_64" else r"16\.0\.0-s390x"
            rx = re.compile(rf"openSUSE-Tumbleweed-Minimal-VM\.{arch}-{ver}-Cloud")
        else:
            sub = "OpenStack-Cloud" if arch == "x86_64" else "s390x-Cloud"
            rx = re.compile(rf"openSUSE-MicroOS\.{arch}-16\.0\.0-{sub}")
        hits = [n for n in names if rx.search(n)]
        # medius took the first hit in Go map order: only a single hit makes that defined.
        assert len(hits) == 1, hits
        return hits[0]
    raise AssertionError(entry_id)


# One row per fixture file (entry and arch): the expected download URL, unique tags, and the
# golden checksum prefix/suffix from medius's tests where it has one (else from the fixture).
ROWS = [
    # CentOS Stream: `9-latest` sorts after the dated names ('l' > '2'), as in medius.
    (
        "centos-stream:9",
        "x86_64",
        "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2",
        "bcebdc00",
        "68142",
        ("9-20211222.0",),
    ),
    (
        "centos-stream:9",
        "aarch64",
        "CentOS-Stream-GenericCloud-9-latest.aarch64.qcow2",
        "66dd927b",
        "4b995",
        ("9-latest",),
    ),
    (
        "centos-stream:9",
        "s390x",
        "CentOS-Stream-GenericCloud-9-latest.s390x.qcow2",
        "17322e25",
        "f016c",
        ("9-latest",),
    ),
    # a shortened form of this one reads 3cb1310f…5921d; the fixture's value ends in …5d921d.
    (
        "centos-stream:10",
        "x86_64",
        "CentOS-Stream-GenericCloud-10-latest.x86_64.qcow2",
        "3cb1310f",
        "d921d",
        ("10-latest",),
    ),
    (
        "centos-stream:10",
        "aarch64",
        "CentOS-Stream-GenericCloud-10-latest.aarch64.qcow2",
        "dc929660",
        "ae93c",
        ("10-latest",),
    ),
    (
        "centos-stream:10",
        "s390x",
        "CentOS-Stream-GenericCloud-10-latest.s390x.qcow2",
        "dc854a20",
        "5c907",
        ("10-latest",),
    ),
    (
        "almalinux:9",
        "x86_64",
        "AlmaLinux-9-GenericCloud-9.8-20260526.x86_64.qcow2",
        "c397eed7",
        "7a251",
        ("9.8-20260526",),
    ),
    (
        "almalinux:9",
        "aarch64",
        "AlmaLinux-9-GenericCloud-9.8-20260526.aarch64.qcow2",
        "b5d883c5",
        "42a29",
        ("9.8-20260526",),
    ),
    (
        "almalinux:9",
        "s390x",
        "AlmaLinux-9-GenericCloud-9.8-20260526.s390x.qcow2",
        "772eacf6",
        "e3b76",
        ("9.8-20260526",),
    ),
    (
        "almalinux:10",
        "x86_64",
        "AlmaLinux-10-GenericCloud-10.2-20260526.0.x86_64.qcow2",
        "47f22186",
        "477b4d",
        ("10.2-20260526.0",),
    ),
    (
        "almalinux:10",
        "aarch64",
        "AlmaLinux-10-GenericCloud-10.2-20260526.0.aarch64.qcow2",
        "336c6861",
        "e74a4",
        ("10.2-20260526.0",),
    ),
    (
        "almalinux:10",
        "s390x",
        "AlmaLinux-10-GenericCloud-10.2-20260526.0.s390x.qcow2",
        "db1f7e82",
        "98ac7",
        ("10.2-20260526.0",),
    ),
    ("ubuntu:22.04", "x86_64", "ubuntu-22.04-server-cloudimg-amd64.img", "de5e632e", "e15cd", ()),
    ("ubuntu:22.04", "aarch64", "ubuntu-22.04-server-cloudimg-arm64.img", "66224c7f", "b5d4f", ()),
    ("ubuntu:22.04", "s390x", "ubuntu-22.04-server-cloudimg-s390x.img", "192c18a5", "610af", ()),
    (
        "opensuse-leap:15.5",
        "x86_64",
        "openSUSE-Leap-15.5-Minimal-VM.x86_64-Cloud.qcow2",
        "46e63b73",
        "1161f",
        (),
    ),
    (
        "opensuse-leap:15.5",
        "aarch64",
        "openSUSE-Leap-15.5-Minimal-VM.aarch64-Cloud.qcow2",
        "3560ca08",
        "da56a",
        (),
    ),
    (
        "opensuse-leap:15.6",
        "x86_64",
        "openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud.qcow2",
        "0f7f09a9",
        "4e52a",
        (),
    ),
    (
        "opensuse-leap:15.6",
        "aarch64",
        "openSUSE-Leap-15.6-Minimal-VM.aarch64-Cloud.qcow2",
        "d2ff4017",
        "b06dd",
        (),
    ),
    (
        "opensuse-leap:16.0",
        "x86_64",
        "Leap-16.0-Minimal-VM.x86_64-Cloud.qcow2",
        "6c3b6b2d",
        "7cb81",
        (),
    ),
    (
        "opensuse-leap:16.0",
        "aarch64",
        "Leap-16.0-Minimal-VM.aarch64-Cloud.qcow2",
        "efd9fe80",
        "a029c",
        (),
    ),
    (
        "opensuse-leap:16.0",
        "s390x",
        "Leap-16.0-Minimal-VM.s390x-s390x-Cloud.qcow2",
        "647bc07f",
        "390b7",
        (),
    ),
    (
        "opensuse-tumbleweed:1.0.0",
        "x86_64",
        "openSUSE-Tumbleweed-Minimal-VM.x86_64-1.0.0-Cloud-Snapshot20240629.qcow2",
        "e8150b4a",
        "58e66",
        (),
    ),
    (
        "opensuse-tumbleweed:1.0.0",
        "s390x",
        "openSUSE-Tumbleweed-Minimal-VM.s390x-16.0.0-s390x-Cloud-Snapshot20251110.qcow2",
        "f7a1caf6",
        "0c8e2",
        (),
    ),
    (
        "opensuse-microos:16.0.0",
        "x86_64",
        "openSUSE-MicroOS.x86_64-16.0.0-OpenStack-Cloud-Snapshot20260207.qcow2",
        "bbc3613d",
        "04b7b",
        (),
    ),
    (
        "opensuse-microos:16.0.0",
        "s390x",
        "openSUSE-MicroOS.s390x-16.0.0-s390x-Cloud-Snapshot20260207.qcow2",
        "59d312f3",
        "23288",
        (),
    ),
]


def fixture_of(entry: Entry, arch: str) -> str:
    """The fixture the entry reads for `arch` (the one whose URL the arch's template names)."""
    url = entry.request().params[arch]
    assert isinstance(url, ChecksumFileParams)
    rendered = url.url.format(version=entry.version, arch=arch, goarch=GOARCH[arch])
    (name,) = (f for f in entry.fixtures if FIXTURE_URLS[f] == rendered)
    return name


@pytest.mark.parametrize(("entry_id", "arch", "image", "prefix", "suffix", "tags"), ROWS)
async def test_selects_like_medius(
    serve: Serve,
    entry_id: str,
    arch: str,
    image: str,
    prefix: str,
    suffix: str,
    tags: tuple[str, ...],
) -> None:
    entry = ENTRIES[entry_id]
    fixture = fixture_of(entry, arch)
    checksum_url = FIXTURE_URLS[fixture]
    async with serve(entry.fixtures) as (_, upstream):
        (release,) = await ChecksumFileSource().discover(entry.request(), upstream)
    (actual,) = (a for a in release.artifacts if a.arch == arch)

    expected = Artifact(
        arch=arch,
        url=checksum_url.rsplit("/", 1)[0] + "/" + image,
        checksum=listed(fixture)[image],
        unique_tags=tags,
    )
    assert expected == actual
    assert actual.checksum.startswith(prefix)
    assert actual.checksum.endswith(suffix)
    # medius's own rule picks the same file from the same fixture.
    assert image == medius_pick(entry_id, arch, list(listed(fixture)))


@pytest.mark.parametrize("entry_id", list(ENTRIES))
async def test_entry_is_one_release_in_catalog_arch_order(serve: Serve, entry_id: str) -> None:
    entry = ENTRIES[entry_id]
    async with serve(entry.fixtures) as (server, upstream):
        releases = await ChecksumFileSource().discover(entry.request(), upstream)
        urls = {FIXTURE_URLS[fixture_of(entry, a)] for a in entry.arches}
        # One request per distinct checksum URL (Ubuntu's three arches share one), no image.
        assert sorted(server.url_for(u).split("/", 3)[3] for u in urls) == sorted(
            p.lstrip("/") for p in server.paths()
        )
    assert [entry.version] == [r.version for r in releases]
    assert entry.arches == tuple(a.arch for a in releases[0].artifacts)
    assert all(isinstance(a, Artifact) for a in releases[0].artifacts)
    assert not releases[0].newest_stable


async def test_shared_checksum_file_is_fetched_once_per_pass(serve: Serve) -> None:
    """Ubuntu's arches, and two entries (Tumbleweed, MicroOS) reading one SHA256SUMS."""
    ubuntu = ENTRIES["ubuntu:22.04"]
    tumbleweed = Entry(
        "1.0.0",
        ("x86_64", "s390x"),
        TUMBLEWEED,
        (),
        per_arch={"s390x": TUMBLEWEED_S390X},
    )
    microos = ENTRIES["opensuse-microos:16.0.0"]
    source = ChecksumFileSource()
    async with serve(ubuntu.fixtures + microos.fixtures) as (server, upstream):
        for _ in range(2):
            await source.discover(ubuntu.request(), upstream)
            await source.discover(tumbleweed.request(), upstream)
            await source.discover(microos.request(), upstream)
        assert server.count(FIXTURE_URLS["ubuntu/SHA256SUM"]) == 1
        assert server.count(TW) == 1
        assert server.count(TW_Z) == 1
        assert len(server.requests) == 3

        # The next pass asks again, conditionally; an unchanged file costs a 304.
        upstream.new_pass()
        await source.discover(ubuntu.request(), upstream)
        expected = [200, 304]
        assert expected == [
            r.status for r in server.requests if r.path.endswith("/22.04/release/SHA256SUMS")
        ]


# -- pick, compression, download ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry_id", "arch", "changes", "url", "compression", "tags"),
    [
        pytest.param(
            "centos-stream:9",
            "aarch64",
            {"pick": "first"},
            "https://cloud.centos.org/centos/9-stream/aarch64/images/"
            "CentOS-Stream-GenericCloud-9-20230501.0.aarch64.qcow2",
            None,
            ("9-20230501.0",),
            id="pick-first",
        ),
        pytest.param(
            "opensuse-tumbleweed:1.0.0",
            "s390x",
            {"match": r"openSUSE-Tumbleweed-Minimal-VM\.{arch}-.*Cloud.*\.qcow2"},
            "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/"
            "openSUSE-Tumbleweed-Minimal-VM.s390x-s390x-Cloud.qcow2",
            None,
            (),
            id="two-hits-last-in-sorted-order",
        ),
        pytest.param(
            "opensuse-tumbleweed:1.0.0",
            "s390x",
            {"match": r"openSUSE-Tumbleweed-Minimal-VM\.{arch}-.*Cloud.*\.qcow2", "pick": "first"},
            "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/"
            "openSUSE-Tumbleweed-Minimal-VM.s390x-16.0.0-s390x-Cloud-Snapshot20251110.qcow2",
            None,
            (),
            id="two-hits-first-in-sorted-order",
        ),
        pytest.param(
            "opensuse-microos:16.0.0",
            "s390x",
            {
                "match": r"openSUSE-MicroOS\.{arch}-16\.0\.0-s390x-dasd-"
                r"Snapshot(?P<snap>\d+)\.raw\.xz",
                "unique_tag": "{version}-{snap}",
            },
            "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/"
            "openSUSE-MicroOS.s390x-16.0.0-s390x-dasd-Snapshot20260207.raw.xz",
            "xz",
            ("16.0.0-20260207",),
            id="auto-xz-and-a-group-in-the-tag",
        ),
        pytest.param(
            "opensuse-microos:16.0.0",
            "s390x",
            {
                "match": r"openSUSE-MicroOS\.{arch}-16\.0\.0-s390x-dasd-Snapshot\d+\.raw\.xz",
                "compression": "none",
            },
            "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/"
            "openSUSE-MicroOS.s390x-16.0.0-s390x-dasd-Snapshot20260207.raw.xz",
            None,
            (),
            id="compression-none-is-respected",
        ),
        pytest.param(
            "ubuntu:22.04",
            "x86_64",
            {
                "download": "https://mirror.example.org/ubuntu/{version}/{file}",
                "compression": "gzip",
            },
            "https://mirror.example.org/ubuntu/22.04/ubuntu-22.04-server-cloudimg-amd64.img",
            "gzip",
            (),
            id="download-template-and-explicit-gzip",
        ),
    ],
)
async def test_entry_options_choose_the_download_url_compression_and_tags(
    serve: Serve,
    entry_id: str,
    arch: str,
    changes: dict[str, Any],
    url: str,
    compression: str | None,
    tags: tuple[str, ...],
) -> None:
    entry = ENTRIES[entry_id]
    async with serve(entry.fixtures) as (_, upstream):
        (release,) = await ChecksumFileSource().discover(entry.request(**changes), upstream)
    (actual,) = (a for a in release.artifacts if a.arch == arch)
    image = url.rsplit("/", 1)[1]
    expected = Artifact(
        arch,
        url,
        listed(fixture_of(entry, arch))[image],
        compression=compression,  # type: ignore[arg-type]
        unique_tags=tags,
    )
    assert expected == actual


async def test_auto_gzip_from_a_gnu_file(serve: Serve) -> None:
    """RHCOS published gzip-compressed qcow2 (medius's removed rhcos artifact)."""
    entry = Entry(
        "4.9",
        ("x86_64",),
        {
            "url": "https://mirror.openshift.com/pub/openshift-v4/dependencies/rhcos/{version}/"
            "latest/sha256sum.txt",
            "format": "gnu",
            "match": r"rhcos-{version}\.\d+-{arch}-qemu\.{arch}\.qcow2\.gz",
        },
        ("hashsum/gnu.checksum",),
    )
    async with serve(entry.fixtures) as (_, upstream):
        actual = await ChecksumFileSource().discover(entry.request(), upstream)
    expected = [
        Release(
            "4.9",
            (
                Artifact(
                    "x86_64",
                    "https://mirror.openshift.com/pub/openshift-v4/dependencies/rhcos/4.9/latest/"
                    "rhcos-4.9.0-x86_64-qemu.x86_64.qcow2.gz",
                    "cae8928e0cd35b88fcec7c07b1072155bde17d7dd44985f8b0d9e3862c556602",
                    compression="gzip",
                ),
            ),
        )
    ]
    assert expected == actual


# -- failures are per arch ------------------------------------------------------------------------

C9 = "https://cloud.centos.org/centos/9-stream/{arch}/images/CHECKSUM"


@pytest.mark.parametrize(
    ("version", "changes", "bodies", "expected"),
    [
        pytest.param(
            "9",
            {"match": r"CentOS-Stream-GenericCloud-{version}-(?P<tag>.+)\.{arch}\.raw"},
            {},
            {
                a: f"{C9.format(arch=a)}: no file name matches "
                f"'CentOS-Stream-GenericCloud-9-(?P<tag>.+)\\.{a}\\.raw'"
                for a in ARCHES
            },
            id="no-candidate-names-url-and-pattern",
        ),
        pytest.param(
            "8",
            {},
            {},
            {
                a: f"https://cloud.centos.org/centos/8-stream/{a}/images/CHECKSUM:"
                " HTTP 404 Not Found"
                + via(f"https://cloud.centos.org/centos/8-stream/{a}/images/CHECKSUM")
                for a in ARCHES
            },
            id="checksum-file-missing",
        ),
        pytest.param(
            "9",
            {},
            {C9.format(arch="aarch64"): "<!DOCTYPE html><html><body>Not here</body></html>"},
            {
                "aarch64": f"{C9.format(arch='aarch64')}: malformed checksum file: "
                "no BSD checksum line found"
            },
            id="html-page-for-one-arch",
        ),
        pytest.param(
            "9",
            {"format": "gnu"},
            {},
            {
                a: f"{C9.format(arch=a)}: malformed checksum file: no GNU checksum line found"
                for a in ARCHES
            },
            id="wrong-format",
        ),
        pytest.param(
            "9",
            {"unique_tag": "-{tag}"},
            {},
            {
                "x86_64": f"{C9.format(arch='x86_64')}: unique tag '-20211222.0' (from "
                "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2) is not a valid tag",
                "aarch64": f"{C9.format(arch='aarch64')}: unique tag '-latest' (from "
                "CentOS-Stream-GenericCloud-9-latest.aarch64.qcow2) is not a valid tag",
                "s390x": f"{C9.format(arch='s390x')}: unique tag '-latest' (from "
                "CentOS-Stream-GenericCloud-9-latest.s390x.qcow2) is not a valid tag",
            },
            id="invalid-unique-tag",
        ),
        pytest.param(
            "9",
            {"algorithm": "sha512"},
            {},
            {
                a: f"{C9.format(arch=a)}: {C9.format(arch=a).removesuffix('CHECKSUM')}{name}: "
                f"checksum '{listed(f'centos-stream/centos-stream9-{a}.checksum')[name]}' is not "
                "128 lowercase hex digits (sha512)"
                for a, name in (
                    ("x86_64", "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2"),
                    ("aarch64", "CentOS-Stream-GenericCloud-9-latest.aarch64.qcow2"),
                    ("s390x", "CentOS-Stream-GenericCloud-9-latest.s390x.qcow2"),
                )
            },
            id="checksum-of-another-algorithm",
        ),
    ],
)
async def test_arch_errors(
    serve: Serve,
    version: str,
    changes: dict[str, Any],
    bodies: dict[str, str],
    expected: dict[str, str],
) -> None:
    entry = ENTRIES["centos-stream:9"]
    entry = Entry(version, entry.arches, entry.source, entry.fixtures)
    async with serve(entry.fixtures) as (server, upstream):
        for url, body in bodies.items():
            put(server.root, url, body)
        (release,) = await ChecksumFileSource().discover(entry.request(**changes), upstream)
    errors = {a.arch: a.message for a in release.artifacts if isinstance(a, ArchError)}
    assert {k: server.resolve_notes(v) for k, v in expected.items()} == errors
    assert entry.arches == tuple(a.arch for a in release.artifacts)
    assert "\n" not in "".join(errors.values())


async def test_needs_a_version(serve: Serve) -> None:
    entry = ENTRIES["ubuntu:22.04"]
    req = entry.request()
    req = DiscoveryRequest(name="ubuntu", version=None, arches=req.arches, params=req.params)
    async with serve(entry.fixtures) as (_, upstream):
        with pytest.raises(SourceError, match="needs a version"):
            await ChecksumFileSource().discover(req, upstream)


# -- parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"match": "CentOS-(?P<tag>.+"}, "is not a valid regex", id="bad-regex"),
        pytest.param(
            {"url": "https://x/{release}/CHECKSUM"},
            "url uses unknown placeholder {release}",
            id="url-placeholder",
        ),
        pytest.param(
            {"match": "{distro}-.+"},
            "match uses unknown placeholder {distro}",
            id="match-placeholder",
        ),
        pytest.param(
            {"unique_tag": "{version}-{date}"},
            "unique_tag uses unknown placeholder {date}",
            id="tag-placeholder",
        ),
        pytest.param(
            {"download": "https://x/{name}/{image}"},
            "download uses unknown placeholder {image}",
            id="download-placeholder",
        ),
        pytest.param(
            {"match": r"CentOS-(?P<tag2>\d+)\.qcow2", "unique_tag": "{tag2}"},
            "unique_tag uses unknown placeholder {tag2}",
            id="group-name-not-a-placeholder",
        ),
        pytest.param(
            {"match": "(?P<version>.+)"},
            "match group name 'version' is reserved",
            id="reserved-group",
        ),
        pytest.param({"format": "sha256sum"}, "'bsd' or 'gnu'", id="bad-format"),
        pytest.param({"pick": "newest"}, "'last' or 'first'", id="bad-pick"),
        pytest.param(
            {"compression": "zstd"}, "'gzip', 'xz', 'none' or 'auto'", id="bad-compression"
        ),
        pytest.param({"algorithm": "md5"}, "'sha256' or 'sha512'", id="bad-algorithm"),
        pytest.param({"prefix": "CentOS"}, "Extra inputs are not permitted", id="unknown-key"),
        pytest.param(
            {"signed_file": "{file}.sha256"},
            "signed_file needs keys",
            id="signed-file-without-keys",
        ),
        pytest.param(
            {"signed_file": "{image}.sha256", "keys": "opensuse"},
            "signed_file uses unknown placeholder {image}",
            id="signed-file-placeholder",
        ),
    ],
)
def test_invalid_params(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ChecksumFileParams.model_validate({**CENTOS, **changes})


def test_regex_quantifiers_survive_rendering() -> None:
    """`{version}` is substituted (escaped); `\\d{2}` stays a quantifier."""
    p = ChecksumFileParams.model_validate(
        {
            **ALMA,
            "match": r"AlmaLinux-{version}-GenericCloud-\d{1,2}\.\d-(?P<tag>\d{8})\.{arch}\.qcow2",
        }
    )
    assert ChecksumFileParams.model_validate(p.model_dump()) == p


def test_registered_as_a_plugin() -> None:
    source = load_sources()["checksum-file"]
    assert isinstance(source, ChecksumFileSource)
    assert not source.discovers_versions
    expected = {
        "kind": "checksum-file",
        **CENTOS,
        "download": None,
        "algorithm": "sha256",
        "compression": "auto",
        "keys": None,
        "signature_url": None,
        "signed_file": None,
    }
    assert expected == source.describe(ENTRIES["centos-stream:9"].request())


# -- upstream names are data, never structure ---------------------------------------------------

SUMS = "https://mirror.example/pub/images/SHA256SUMS"
HEX = "c" * 64


def _ours(**changes: Any) -> Entry:
    source = {"url": SUMS, "format": "gnu", "match": r".*\.qcow2", **changes}
    return Entry("1", ("x86_64",), source, ())


@pytest.mark.parametrize(
    ("sums", "changes", "message"),
    [
        pytest.param(
            f"{HEX}  https://evil.example/x.qcow2\n{HEX}  ../x.qcow2\n{HEX}  %2e%2e/x.qcow2\n"
            f"{HEX}  README\n",
            {},
            rf"{SUMS}: no file name matches '.*\.qcow2'",
            id="absolute-url-and-dot-dot-names-refused",
        ),
        pytest.param(
            f"{HEX}  %2e%2e\n",
            {"match": r"%2e%2e"},
            f"{SUMS}: 'https://mirror.example/pub/images/%2e%2e': URL built from an upstream "
            "name leaves the directory 'https://mirror.example/pub/images/'",
            id="percent-encoded-dot-dot",
        ),
        pytest.param(
            f"{HEX}  x.qcow2%3fa=..%2f\n{HEX}  README\n",
            {"match": r"x\.qcow2%3fa=\.\.%2f"},
            rf"{SUMS}: no file name matches 'x\.qcow2%3fa=\.\.%2f'",
            id="dot-dot-anywhere",
        ),
        pytest.param(
            f"{HEX}  %2e%2e\n",
            {"match": r"(?P<tag>%2e%2e)", "download": "https://cdn.example/img/{tag}/{file}"},
            f"{SUMS}: 'https://cdn.example/img/%2e%2e/%2e%2e': URL built from an upstream name "
            "leaves the directory 'https://cdn.example/img/'",
            id="download-template-leaves-its-directory",
        ),
        pytest.param(
            f"{HEX}  {'a' * 200}b.qcow2\n{HEX}  ok.qcow2\n",
            {"match": r"(a|a)+\.qcow2|ok\.qcow2"},
            rf"{SUMS}: match '(a|a)+\.qcow2|ok\.qcow2' took longer than 2 s on the upstream names",
            id="catastrophic-regex",
        ),
    ],
)
async def test_upstream_names_cannot_redirect_or_stall_discovery(
    serve: Serve, sums: str, changes: dict[str, Any], message: str
) -> None:
    entry = _ours(**changes)
    async with serve(()) as (server, upstream):
        put(server.root, SUMS, sums)
        (release,) = await ChecksumFileSource().discover(entry.request(), upstream)
    assert [ArchError("x86_64", message)] == list(release.artifacts)


async def test_a_download_template_below_its_directory_is_kept(serve: Serve) -> None:
    entry = _ours(match=r"(?P<tag>v1)-x\.qcow2", download="https://cdn.example/img/{tag}/{file}")
    async with serve(()) as (server, upstream):
        put(server.root, SUMS, f"{HEX}  v1-x.qcow2\n")
        (release,) = await ChecksumFileSource().discover(entry.request(), upstream)
    (artifact,) = release.artifacts
    assert isinstance(artifact, Artifact)
    assert "https://cdn.example/img/v1/v1-x.qcow2" == artifact.url
