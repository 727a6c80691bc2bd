"""The default catalog (config/catalog.yaml) against medius's catalog and the real upstream files.

Two things are shown here:
- the catalog's entries are medius's (medius's `cmd/medius/common/registry.go`): order, arches,
  env per entry and per arch, users, docs and `latest` flags, the test-only cirros entry;
- discovering the real default catalog, as loaded by `load_catalog(None)` (signatures off: the
  fixtures are unsigned copies; tests/upstream/ covers signatures), against the loopback server
  serving the fixture files selects what medius selects: one row per entry and arch with the
  file, checksum (medius's golden digits) and unique tags. Deliberate differences
  (docs/architecture.md "Deliberate differences from medius") are said where they apply: Debian's
  versioned download, the deterministic Tumbleweed/MicroOS pick.

Ubuntu's fixture is the 22.04 SHA256SUMS; the other Ubuntu versions are served that file with the
version in the names replaced (the same format, a different version), to check each entry's
pattern. Tumbleweed's golden values come from the older snapshot files, MicroOS's from the newer
ones (both are the same two URLs upstream), so those rows are discovered on their own trees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from containerdisks.api import ArchError, Artifact
from containerdisks.catalog import (
    ENV_INSTANCETYPE,
    ENV_PREFERENCE,
    BoundItem,
    Catalog,
    Entry,
    Focus,
    ItemFailure,
    load_catalog,
)
from containerdisks.engine.spec import EntrySpec
from containerdisks.upstream import HttpUpstream
from tests.support.sources import Serve
from tests.support.upstream_server import (
    DEFAULT_FIXTURES,
    FIXTURE_URLS,
    FIXTURES_DIR,
    put,
)

X, A, Z = "x86_64", "aarch64", "s390x"
ALL = (X, A, Z)
UBUNTU = ("26.04", "25.04", "24.04", "22.04", "20.04")
UBUNTU_SUMS = "https://cloud-images.ubuntu.com/releases/{}/release/SHA256SUMS"

# -- the catalog itself ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    key: str
    arches: tuple[str, ...]
    preference: str | dict[str, str] | None
    user: str | None
    docs: bool = False
    latest: bool = False
    kind: str = "checksum-file"
    test_only: bool = False


# medius's catalog (`cmd/medius/common/registry.go`), in its order; instancetype u1.medium
# wherever there is a preference.
MEDIUS = [
    Expected("almalinux:10", ALL, "rhel.10", "almalinux", docs=True),
    Expected("almalinux:9", ALL, "rhel.9", "almalinux", docs=True),
    Expected("centos-stream:10", ALL, "centos.stream10", "cloud-user", docs=True),
    Expected("centos-stream:9", ALL, "centos.stream9", "cloud-user", docs=True),
    Expected("ubuntu:26.04", ALL, "ubuntu", "ubuntu", docs=True),
    Expected("ubuntu:25.04", ALL, "ubuntu", "ubuntu"),
    Expected("ubuntu:24.04", ALL, "ubuntu", "ubuntu"),
    Expected("ubuntu:22.04", ALL, "ubuntu", "ubuntu"),
    Expected("ubuntu:20.04", ALL, "ubuntu", "ubuntu"),
    Expected("opensuse-tumbleweed:1.0.0", (X, Z), "opensuse.tumbleweed", "opensuse", docs=True),
    Expected("opensuse-microos:16.0.0", (X, Z), "opensuse.tumbleweed", "root", docs=True),
    Expected("opensuse-leap:16.0", ALL, "opensuse.leap", "sles", docs=True),
    Expected("opensuse-leap:15.6", (X, A), "opensuse.leap", "opensuse"),
    Expected("opensuse-leap:15.5", (X, A), "opensuse.leap", "opensuse"),
    Expected("debian:11", (X, A), "debian", "debian", kind="debian"),
    Expected("debian:12", (X, A), "debian", "debian", kind="debian"),
    Expected("debian:13", (X, A), "debian", "debian", docs=True, latest=True, kind="debian"),
    Expected("cirros:6.1", (X, A), None, None, kind="static", test_only=True),
    Expected(
        "fedora:*",
        ALL,
        {X: "fedora", A: "fedora.arm64", Z: "fedora.s390x"},
        "fedora",
        docs=True,
        latest=True,
        kind="fedora",
    ),
]


def test_entries_are_medius_catalog() -> None:
    catalog = load_catalog(None, signatures=False)
    assert [e.key for e in MEDIUS] == [b.item.label for b in catalog.items]
    for expected, bound in zip(MEDIUS, catalog.items, strict=True):
        item = bound.item
        assert expected.arches == item.arches, expected.key
        assert expected.kind == item.source["kind"], expected.key
        assert (expected.user, expected.docs, expected.latest, expected.test_only) == (
            item.user,
            item.docs,
            item.latest,
            item.skip_unless_focused,
        ), expected.key
        for arch in item.arches:
            pref = expected.preference
            pref = pref.get(arch) if isinstance(pref, dict) else pref
            env = (f"{ENV_INSTANCETYPE}=u1.medium", f"{ENV_PREFERENCE}={pref}") if pref else ()
            assert env == item.env(arch), (expected.key, arch)


def test_verify_facts_are_medius_vm_options_and_tests() -> None:
    """medius boots Fedora with secure boot except on s390x (PR #281), and runs its GuestOsInfo
    test (qemu-ga in the guest) for AlmaLinux, CentOS Stream and Fedora only (§7)."""
    catalog = load_catalog(None, signatures=False)
    agent = {b.item.name for b in catalog.items if b.item.guest_agent}
    assert {"almalinux", "centos-stream", "fedora"} == agent
    secure = {
        (b.item.name, arch)
        for b in catalog.items
        for arch in b.item.arches
        if b.item.secure_boot_for(arch)
    }
    assert {("fedora", X), ("fedora", A)} == secure


def test_only_newest_fedora_and_debian_13_carry_latest() -> None:
    latest = [b.item.label for b in load_catalog(None, signatures=False).items if b.item.latest]
    assert ["debian:13", "fedora:*"] == latest


def test_cirros_only_when_focused() -> None:
    catalog = load_catalog(None, signatures=False)
    assert "cirros:6.1" not in [b.item.label for b in catalog.select(Focus(""))]
    assert ["cirros:6.1"] == [b.item.label for b in catalog.select(Focus("cirros:6.1"))]
    assert ["cirros:6.1"] == [b.item.label for b in catalog.select(Focus("cirros:*"))]


# -- selection, one row per entry and arch --------------------------------------------------------


def ubuntu_sums(version: str) -> str:
    """The real 22.04 SHA256SUMS with the version in its names replaced."""
    return (FIXTURES_DIR / "ubuntu/SHA256SUM").read_text().replace("22.04", version)


#: The newest snapshot of the shared openSUSE files (MicroOS's fixtures) and the older one
#: (Tumbleweed's), each with every other fixture.
NEWER = DEFAULT_FIXTURES
OLDER = tuple(
    f.replace("opensuse-microos/microos", "opensuse-tumbleweed/tumbleweed") for f in NEWER
)


@asynccontextmanager
async def default_upstream(serve: Serve, fixtures: tuple[str, ...] = NEWER) -> Any:
    async with serve(fixtures) as (server, upstream):
        for version in UBUNTU:
            if version != "22.04":
                put(server.root, UBUNTU_SUMS.format(version), ubuntu_sums(version))
        yield server, upstream


def listed(fixture: str) -> dict[str, str]:
    """`name -> hex` of a checksum fixture, split by hand (independent of the parser)."""
    out = {}
    for line in (FIXTURES_DIR / fixture).read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "SHA256" and words[2] == "=":
            out[words[1][1:-1]] = words[3]
        elif len(words) == 2 and len(words[0]) == 64:
            out[words[1].lstrip("*")] = words[0]
    return out


def fedora_sha(link: str) -> str:
    items = json.loads((FIXTURES_DIR / "fedora/releases.json").read_text())
    return next(str(i["sha256"]) for i in items if i["link"] == link)


def debian_sha512(version: str, goarch: str) -> str:
    import base64  # noqa: PLC0415

    doc = json.loads(
        (FIXTURES_DIR / f"debian/debian-{version}-genericcloud-{goarch}.json").read_text()
    )
    for item in doc["items"]:
        if item["metadata"]["labels"].get("upload.cloud.debian.org/image-format") == "qcow2":
            b64 = item["metadata"]["annotations"]["cloud.debian.org/digest"][7:]
            return base64.b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    raise KeyError(version)


ALMA = "https://repo.almalinux.org/almalinux/{v}/cloud/{a}/images/"
CENTOS = "https://cloud.centos.org/centos/{v}-stream/{a}/images/"
TW = "https://download.opensuse.org/tumbleweed/appliances/"
TW_Z = "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/"
LEAP = "https://download.opensuse.org/distribution/leap/{v}/appliances/"
DEBIAN = "https://cloud.debian.org/images/cloud/"
FEDORA = "https://download.fedoraproject.org/pub/"


@dataclass(frozen=True)
class Row:
    """One entry and arch: what medius selects, and where its checksum comes from."""

    key: str
    arch: str
    url: str
    prefix: str  # medius's golden digits (or the fixture's)
    suffix: str
    tags: tuple[str, ...] = ()
    fixture: str | None = None  # checksum file the full value is read from
    fixtures: tuple[str, ...] = NEWER

    def checksum(self) -> str:
        name = self.url.rsplit("/", 1)[1]
        if self.key.startswith("debian:"):
            return debian_sha512(self.key.split(":")[1], "amd64" if self.arch == X else "arm64")
        if self.key.startswith("fedora:"):
            return fedora_sha(self.url)
        if self.key.startswith("cirros:"):
            return self.prefix
        assert self.fixture is not None
        sums = listed(self.fixture)
        if self.key.startswith("ubuntu:"):
            name = name.replace(self.key.split(":")[1], "22.04")
        return sums[name]


def _ubuntu_rows() -> Iterator[Row]:
    golden = {X: ("amd64", "de5e632e", "e15cd"), A: ("arm64", "66224c7f", "b5d4f")}
    golden[Z] = ("s390x", "192c18a5", "610af")
    base = "https://cloud-images.ubuntu.com/releases/{v}/release/"
    for v in UBUNTU:
        for arch, (goarch, pre, suf) in golden.items():
            url = base.format(v=v) + f"ubuntu-{v}-server-cloudimg-{goarch}.img"
            yield Row(f"ubuntu:{v}", arch, url, pre, suf, fixture="ubuntu/SHA256SUM")


def _cs(v: str, a: str, name: str) -> str:
    return CENTOS.format(v=v, a=a) + name


def _alma(v: str, a: str, release: str) -> str:
    return ALMA.format(v=v, a=a) + f"AlmaLinux-{v}-GenericCloud-{release}.{a}.qcow2"


def _debian(codename: str, version: str, stamp: str, goarch: str) -> str:
    return f"{DEBIAN}{codename}/{stamp}/debian-{version}-genericcloud-{goarch}-{stamp}.qcow2"


D13 = "20250814-2204"
F40_DIR = FEDORA + "fedora/linux/releases/40/Cloud/"
F39_DIR = FEDORA + "fedora/linux/releases/39/Cloud/"
F39_Z_DIR = FEDORA + "fedora-secondary/releases/39/Cloud/"
BETA_DIR = FEDORA + "fedora/linux/releases/test/41_Beta/Cloud/"
TW_FIX = "opensuse-tumbleweed/tumbleweed"
MICRO_FIX = "opensuse-microos/microos"

ROWS = [
    Row("almalinux:10", X, _alma("10", X, "10.2-20260526.0"), "47f22186", "477b4d",
        ("10.2-20260526.0",), "almalinux/almalinux10-x86_64.checksum"),
    Row("almalinux:10", A, _alma("10", A, "10.2-20260526.0"), "336c6861", "e74a4",
        ("10.2-20260526.0",), "almalinux/almalinux10-aarch64.checksum"),
    Row("almalinux:10", Z, _alma("10", Z, "10.2-20260526.0"), "db1f7e82", "98ac7",
        ("10.2-20260526.0",), "almalinux/almalinux10-s390x.checksum"),
    Row("almalinux:9", X, _alma("9", X, "9.8-20260526"), "c397eed7", "7a251",
        ("9.8-20260526",), "almalinux/almalinux9-x86_64.checksum"),
    Row("almalinux:9", A, _alma("9", A, "9.8-20260526"), "b5d883c5", "42a29",
        ("9.8-20260526",), "almalinux/almalinux9-aarch64.checksum"),
    Row("almalinux:9", Z, _alma("9", Z, "9.8-20260526"), "772eacf6", "e3b76",
        ("9.8-20260526",), "almalinux/almalinux9-s390x.checksum"),
    Row("centos-stream:10", X, _cs("10", X, "CentOS-Stream-GenericCloud-10-latest.x86_64.qcow2"),
        "3cb1310f", "d921d", ("10-latest",), "centos-stream/centos-stream10-x86_64.checksum"),
    Row("centos-stream:10", A, _cs("10", A, "CentOS-Stream-GenericCloud-10-latest.aarch64.qcow2"),
        "dc929660", "ae93c", ("10-latest",), "centos-stream/centos-stream10-aarch64.checksum"),
    Row("centos-stream:10", Z, _cs("10", Z, "CentOS-Stream-GenericCloud-10-latest.s390x.qcow2"),
        "dc854a20", "5c907", ("10-latest",), "centos-stream/centos-stream10-s390x.checksum"),
    Row("centos-stream:9", X, _cs("9", X, "CentOS-Stream-GenericCloud-9-20211222.0.x86_64.qcow2"),
        "bcebdc00", "68142", ("9-20211222.0",), "centos-stream/centos-stream9-x86_64.checksum"),
    Row("centos-stream:9", A, _cs("9", A, "CentOS-Stream-GenericCloud-9-latest.aarch64.qcow2"),
        "66dd927b", "4b995", ("9-latest",), "centos-stream/centos-stream9-aarch64.checksum"),
    Row("centos-stream:9", Z, _cs("9", Z, "CentOS-Stream-GenericCloud-9-latest.s390x.qcow2"),
        "17322e25", "f016c", ("9-latest",), "centos-stream/centos-stream9-s390x.checksum"),
    *_ubuntu_rows(),
    # medius took the first regex hit in Go map order; each file has a single hit, so the
    # deterministic last-in-sorted-order pick selects the same file.
    Row("opensuse-tumbleweed:1.0.0", X,
        TW + "openSUSE-Tumbleweed-Minimal-VM.x86_64-1.0.0-Cloud-Snapshot20240629.qcow2",
        "e8150b4a", "58e66", (), f"{TW_FIX}.SHA256SUM", OLDER),
    Row("opensuse-tumbleweed:1.0.0", Z,
        TW_Z + "openSUSE-Tumbleweed-Minimal-VM.s390x-16.0.0-s390x-Cloud-Snapshot20251110.qcow2",
        "f7a1caf6", "0c8e2", (), f"{TW_FIX}-s390x.SHA256SUM", OLDER),
    Row("opensuse-microos:16.0.0", X,
        TW + "openSUSE-MicroOS.x86_64-16.0.0-OpenStack-Cloud-Snapshot20260207.qcow2",
        "bbc3613d", "04b7b", (), f"{MICRO_FIX}.SHA256SUM"),
    Row("opensuse-microos:16.0.0", Z,
        TW_Z + "openSUSE-MicroOS.s390x-16.0.0-s390x-Cloud-Snapshot20260207.qcow2",
        "59d312f3", "23288", (), f"{MICRO_FIX}-s390x.SHA256SUM"),
    Row("opensuse-leap:16.0", X, LEAP.format(v="16.0") + "Leap-16.0-Minimal-VM.x86_64-Cloud.qcow2",
        "6c3b6b2d", "7cb81", (),
        "opensuse-leap/Leap-16.0-Minimal-VM.x86_64-Cloud.qcow2.sha256"),
    Row("opensuse-leap:16.0", A, LEAP.format(v="16.0") + "Leap-16.0-Minimal-VM.aarch64-Cloud.qcow2",
        "efd9fe80", "a029c", (),
        "opensuse-leap/Leap-16.0-Minimal-VM.aarch64-Cloud.qcow2.sha256"),
    Row("opensuse-leap:16.0", Z,
        LEAP.format(v="16.0") + "Leap-16.0-Minimal-VM.s390x-s390x-Cloud.qcow2",
        "647bc07f", "390b7", (),
        "opensuse-leap/Leap-16.0-Minimal-VM.s390x-s390x-Cloud.qcow2.sha256"),
    Row("opensuse-leap:15.6", X,
        LEAP.format(v="15.6") + "openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud.qcow2",
        "0f7f09a9", "4e52a", (),
        "opensuse-leap/openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud.qcow2.sha256"),
    Row("opensuse-leap:15.6", A,
        LEAP.format(v="15.6") + "openSUSE-Leap-15.6-Minimal-VM.aarch64-Cloud.qcow2",
        "d2ff4017", "b06dd", (),
        "opensuse-leap/openSUSE-Leap-15.6-Minimal-VM.aarch64-Cloud.qcow2.sha256"),
    Row("opensuse-leap:15.5", X,
        LEAP.format(v="15.5") + "openSUSE-Leap-15.5-Minimal-VM.x86_64-Cloud.qcow2",
        "46e63b73", "1161f", (),
        "opensuse-leap/openSUSE-Leap-15.5-Minimal-VM.x86_64-Cloud.qcow2.sha256"),
    Row("opensuse-leap:15.5", A,
        LEAP.format(v="15.5") + "openSUSE-Leap-15.5-Minimal-VM.aarch64-Cloud.qcow2",
        "3560ca08", "da56a", (),
        "opensuse-leap/openSUSE-Leap-15.5-Minimal-VM.aarch64-Cloud.qcow2.sha256"),
    # Debian: the versioned file of data.ref, where medius downloaded latest/ (a deliberate
    # difference, docs/architecture.md).
    Row("debian:11", X, _debian("bullseye", "11", "20250303-2040", "amd64"), "", "",
        ("11-20250303-2040",)),
    Row("debian:11", A, _debian("bullseye", "11", "20250303-2040", "arm64"), "", "",
        ("11-20250303-2040",)),
    Row("debian:12", X, _debian("bookworm", "12", "20250210-2019", "amd64"), "", "",
        ("12-20250210-2019",)),
    Row("debian:12", A, _debian("bookworm", "12", "20250210-2019", "arm64"), "", "",
        ("12-20250210-2019",)),
    Row("debian:13", X, _debian("trixie", "13", D13, "amd64"),
        "d76122c87c940d1ab9334f4307c98c01dc42f0b49a20cddf278d59b92d34ab63",
        "d05ac1f40dffda3d2d32e381f097706eee6ccbf79a596bfb2cbb3d83c635ae35", ("13-20250814-2204",)),
    Row("debian:13", A, _debian("trixie", "13", D13, "arm64"), "", "", ("13-20250814-2204",)),
    Row("cirros:6.1", X, "https://download.cirros-cloud.net/0.6.1/cirros-0.6.1-x86_64-disk.img",
        "cc704ab14342c1c8a8d91b66a7fc611d921c8b8f1aaf4695f9d6463d913fa8d1", ""),
    Row("cirros:6.1", A, "https://download.cirros-cloud.net/0.6.1/cirros-0.6.1-aarch64-disk.img",
        "db9420c481c11dee17860aa46fb1a3efa05fa4fb152726d6344e24da03cb0ccf", ""),
    Row("fedora:40", X, F40_DIR + "x86_64/images/Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2",
        "ac58f3c35b73272d5986fa6d3bc44fd246b45df4c334e99a07b3bbd00684adee", "", ("40-1.14",)),
    Row("fedora:40", A, F40_DIR + "aarch64/images/Fedora-Cloud-Base-Generic.aarch64-40-1.14.qcow2",
        "ebdce26d", "f7459", ("40-1.14",)),
    Row("fedora:39", X, F39_DIR + "x86_64/images/Fedora-Cloud-Base-39-1.5.x86_64.qcow2",
        "ab5be505", "52f37", ("39-1.5",)),
    Row("fedora:39", A, F39_DIR + "aarch64/images/Fedora-Cloud-Base-39-1.5.aarch64.qcow2",
        "", "", ("39-1.5",)),
    Row("fedora:39", Z,
        F39_Z_DIR + "s390x/images/Fedora-Cloud-Base-39-1.5.s390x.qcow2", "", "", ("39-1.5",)),
    # The hand-edited Beta items of medius's fixture: placeholder checksums, no unique tag.
    Row("fedora:41-beta", X,
        BETA_DIR + "x86_64/images/Fedora-Cloud-Base-Generic-41_Beta-1.2.x86_64.qcow2",
        "a" * 64, ""),
    Row("fedora:41-beta", A,
        BETA_DIR + "aarch64/images/Fedora-Cloud-Base-Generic-41_Beta-1.2.aarch64.qcow2",
        "b" * 64, ""),
]  # fmt: skip


def declared_size(url: str) -> int:
    """The size Fedora's releases.json declares for the image at `url` (a string there)."""
    items = json.loads((FIXTURES_DIR / "fedora/releases.json").read_text())
    (size,) = {int(i["size"]) for i in items if i["link"] == url}
    return size


async def discover_all(
    catalog: Catalog, upstream: HttpUpstream, items: list[BoundItem] | None = None
) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for bound in items if items is not None else catalog.items:
        found = await catalog.discover(bound, upstream, Focus(""))
        assert not isinstance(found, ItemFailure), found
        entries.update((e.key, e) for e in found)
    return entries


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.key}-{r.arch}" for r in ROWS])
async def test_selects_like_medius(serve: Serve, row: Row) -> None:
    catalog = load_catalog(None, signatures=False)
    name = row.key.split(":")[0]
    items = [b for b in catalog.items if b.item.name == name]
    async with default_upstream(serve, row.fixtures) as (_, upstream):
        entries = await discover_all(catalog, upstream, items)
    (artifact,) = (a for a in entries[row.key].artifacts if a.arch == row.arch)
    checksum = row.checksum()
    expected = Artifact(
        row.arch,
        row.url,
        checksum,
        algorithm="sha512" if name == "debian" else "sha256",
        unique_tags=row.tags,
        size=declared_size(row.url) if name == "fedora" else None,
    )
    assert expected == artifact
    assert checksum.startswith(row.prefix)
    assert checksum.endswith(row.suffix)


def test_every_entry_and_arch_has_a_row() -> None:
    catalog = load_catalog(None, signatures=False)
    fixed = {(b.item.label, a) for b in catalog.items if b.item.version for a in b.item.arches}
    fedora = {(X, "40"), (A, "40"), (X, "39"), (A, "39"), (Z, "39"), (X, "41-beta"), (A, "41-beta")}
    assert fixed | {(f"fedora:{v}", a) for a, v in fedora} == {(r.key, r.arch) for r in ROWS}


def served_path(url: str) -> str:
    """The path the loopback server sees for canonical `url` (`/<host>/<path>`)."""
    parts = urlsplit(url)
    return f"/{parts.hostname}{parts.path}"


async def test_whole_catalog_one_request_per_metadata_file(serve: Serve) -> None:
    """One pass over every item: each distinct metadata URL is fetched once, no image."""
    catalog = load_catalog(None, signatures=False)
    async with default_upstream(serve) as (server, upstream):
        entries = await discover_all(catalog, upstream)
        paths = server.paths()
    assert len(paths) == len(set(paths))
    metadata = {FIXTURE_URLS[f] for f in NEWER if not f.startswith(("hashsum/", "ubuntu/"))} | {
        UBUNTU_SUMS.format(v) for v in UBUNTU
    }
    assert sorted(served_path(u) for u in metadata) == sorted(paths)
    failed = [(k, a) for k, e in entries.items() for a in e.artifacts if isinstance(a, ArchError)]
    assert [] == failed
    assert 18 + 3 == len(entries)  # 18 fixed entries, cirros included, and three Fedora versions


async def test_centos_stream_9_latest_tag(serve: Serve) -> None:
    """`centos-stream:9-latest`: the `-latest` image sorts after the dated ones and wins, and its
    tag is the entry's unique tag (downstream depends on it; kubevirt-tekton-tasks PR #903)."""
    catalog = load_catalog(None, signatures=False)
    items = catalog.select(Focus("centos-stream:9"))
    aarch64 = (FIXTURES_DIR / "centos-stream/centos-stream9-aarch64.checksum").read_text()
    x86 = "https://cloud.centos.org/centos/9-stream/x86_64/images/CHECKSUM"
    async with default_upstream(serve) as (server, upstream):
        # A current x86_64 CHECKSUM: dated images and the -latest one, as upstream lists them.
        put(server.root, x86, aarch64.replace("aarch64", "x86_64"))
        entries = await discover_all(catalog, upstream, items)
    entry = entries["centos-stream:9"]
    names = [a.url.rsplit("/", 1)[1] for a in entry.artifacts if isinstance(a, Artifact)]
    assert [f"CentOS-Stream-GenericCloud-9-latest.{a}.qcow2" for a in ALL] == names
    prefix = "CentOS-Stream-GenericCloud-9-2"
    dated = sorted(
        n for n in listed("centos-stream/centos-stream9-aarch64.checksum") if prefix in n
    )
    assert dated  # dated GenericCloud images are listed too, and sort before -latest
    assert all(n < "CentOS-Stream-GenericCloud-9-latest.aarch64.qcow2" for n in dated)
    # Pushed as <version>-<stamp>, then these, in this order.
    assert ("9-latest", "9") == EntrySpec.of(entry, keep_timestamp_tags=0).tags


async def test_leap_downloads_the_name_its_sha256_lists_alias_or_build(serve: Serve) -> None:
    """The alias's `.sha256` names the alias (the real files of the rows above); one naming the
    build (`...-Cloud-Build18.7.qcow2`, as a `.sha256` fetched beside a build does) is matched
    too, and the build is what is downloaded: the name the file lists, not the URL's."""
    catalog = load_catalog(None, signatures=False)
    items = catalog.select(Focus("opensuse-leap:16.0"))
    leap = LEAP.format(v="16.0")
    fixture = "opensuse-leap/Leap-16.0-Minimal-VM.x86_64-Cloud.qcow2.sha256"
    real = (FIXTURES_DIR / fixture).read_text()
    assert "  Leap-16.0-Minimal-VM.x86_64-Cloud.qcow2\n" in real
    async with default_upstream(serve) as (server, upstream):
        put(server.root, leap + fixture.split("/")[1],
            real.replace("-Cloud.qcow2", "-Cloud-Build18.7.qcow2"))  # fmt: skip
        entries = await discover_all(catalog, upstream, items)
    (artifact,) = (a for a in entries["opensuse-leap:16.0"].artifacts if a.arch == X)
    assert isinstance(artifact, Artifact)
    assert leap + "Leap-16.0-Minimal-VM.x86_64-Cloud-Build18.7.qcow2" == artifact.url
    assert real.split()[0] == artifact.checksum


async def test_debian_13_is_latest_and_sha512(serve: Serve) -> None:
    catalog = load_catalog(None, signatures=False)
    async with default_upstream(serve) as (_, upstream):
        entries = await discover_all(catalog, upstream, catalog.select(Focus("debian:13")))
    entry = entries["debian:13"]
    assert (True, True) == (entry.latest, entry.docs)
    assert ("13-20250814-2204", "13", "latest") == EntrySpec.of(entry, keep_timestamp_tags=0).tags
    assert {"sha512"} == {a.algorithm for a in entry.artifacts if isinstance(a, Artifact)}
