"""Every entry of the default catalog, published from a local upstream in the real formats.

The upstream tree serves, at the canonical URLs, the real fixture files of every distribution
(checksum files, Leap's `.sha256`, Debian's JSON, Fedora's releases.json) with the selected
images' checksums replaced by those of small real qcow2 files (qemu-img, 1 MiB virtual) served
beside them. `containerdisks images push --dry-run=false` with the real default catalog publishes
all distributions and arches — into `oci:` layouts, and into the real registry — and skopeo
reads back tags, platforms, `shasum` and source labels, and env. A second pass downloads no
image and asks each distinct upstream metadata file exactly once (counted on the server); it
needs the first, so the two share a test.

The test-only cirros entry is pinned to upstream's real checksums, which local bytes cannot
match (an unfocused run leaves it out): a dry run with `--focus cirros:6.1` shows it planned
from the default catalog without any request upstream, and a test of its own publishes the same
entry with only its two checksums replaced by those of local images.

Where the tree differs from the fixtures, it is said below: each CentOS Stream arch serves the
current (aarch64) CHECKSUM layout, so `-latest` wins everywhere and `centos-stream:9-latest` is
pushed; the other Ubuntu versions serve the 22.04 SHA256SUMS with the version replaced; an older
Tumbleweed snapshot is listed beside the newest to show the deterministic pick; Debian's moving
`latest/` file holds other bytes, so only the versioned download named by `data.ref` verifies.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from containerdisks import oci
from tests.support.cli import clean_env
from tests.support.disks import make_qcow2
from tests.support.upstream_server import FIXTURES_DIR, UpstreamServer, put

X, A, Z = "x86_64", "aarch64", "s390x"
GOARCH = {X: "amd64", A: "arm64", Z: "s390x"}
IT = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium"
PREF = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE="
CATALOG = Path(__file__).resolve().parents[2] / "config" / "catalog.yaml"

WRITE_SIDE = hasattr(oci.RegistryClient, "blob_upload") and hasattr(
    oci.RegistryClient, "put_manifest"
)


@dataclass
class Image:
    """One arch of one entry as upstream serves it."""

    arch: str
    url: str  # canonical download URL
    data: bytes
    algorithm: str = "sha256"

    @property
    def checksum(self) -> str:
        return hashlib.new(self.algorithm, self.data).hexdigest()


@dataclass
class Want:
    """One entry as it must be published."""

    key: str
    preference: str | dict[str, str] | None
    unique: tuple[str, ...] = ()
    latest: bool = False
    images: list[Image] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.key.split(":")[0]

    @property
    def version(self) -> str:
        return self.key.split(":")[1]

    def env(self, arch: str) -> list[str]:
        pref = self.preference
        pref = pref.get(arch) if isinstance(pref, dict) else pref
        return sorted([IT, PREF + pref]) if pref else []

    def tags(self) -> list[str]:
        return [*self.unique, self.version, *(["latest"] if self.latest else [])]


@dataclass
class Tree:
    root: Path
    wants: dict[str, Want]
    metadata: set[str]  # canonical URLs of upstream metadata files
    cirros: Want


class Builder:
    """Lays out the upstream tree: metadata files edited in place, images beside them."""

    def __init__(self, root: Path, disks: Path) -> None:
        self.root, self.disks = root, disks
        self.texts: dict[str, str] = {}
        self.wants: dict[str, Want] = {}
        self.count = 0

    def disk(self, seed: str) -> bytes:
        self.count += 1
        return make_qcow2(self.disks / f"{self.count}.qcow2", seed, size_mib=1, data_kib=64)

    def want(self, key: str, preference: str | dict[str, str] | None, **kw: Any) -> Want:
        return self.wants.setdefault(key, Want(key, preference, **kw))

    def metadata(self, url: str, text: str) -> None:
        self.texts.setdefault(url, text)

    def listed(self, want: Want, arch: str, sums_url: str, name: str) -> None:
        """Serve image `name` beside checksum file `sums_url`, with its real checksum there."""
        data = self.disk(f"{want.key}/{arch}")
        url = sums_url.rsplit("/", 1)[0] + "/" + name
        put(self.root, url, data)
        self.texts[sums_url] = with_checksum(self.texts[sums_url], name, sha256(data))
        want.images.append(Image(arch, url, data))

    def write(self) -> None:
        for url, text in self.texts.items():
            put(self.root, url, text)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_checksum(text: str, name: str, hexdigest: str) -> str:
    """Replace the checksum of `name` in a BSD or GNU checksum file, keeping the format."""
    lines = text.splitlines(keepends=True)
    hits = 0
    for i, line in enumerate(lines):
        words = line.split()
        if len(words) == 4 and words[0] == "SHA256" and words[1] == f"({name})":
            lines[i] = line.replace(words[3], hexdigest)
            hits += 1
        elif len(words) == 2 and words[1].lstrip("*") == name:
            lines[i] = line.replace(words[0], hexdigest)
            hits += 1
    assert hits == 1, (name, hits)
    return "".join(lines)


def fixture(name: str) -> str:
    return (FIXTURES_DIR / name).read_text()


ALMA = "https://repo.almalinux.org/almalinux/{v}/cloud/{a}/images/CHECKSUM"
CENTOS = "https://cloud.centos.org/centos/{v}-stream/{a}/images/CHECKSUM"
UBUNTU = "https://cloud-images.ubuntu.com/releases/{v}/release/SHA256SUMS"
TW = "https://download.opensuse.org/tumbleweed/appliances/SHA256SUMS"
TW_Z = "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/SHA256SUMS"
LEAP = "https://download.opensuse.org/distribution/leap/{v}/appliances/{f}.sha256"
DEBIAN = "https://cloud.debian.org/images/cloud/"
RELEASES = "https://getfedora.org/releases.json"


def build_tree(root: Path, disks: Path) -> Tree:
    b = Builder(root, disks)
    for v, release in (("10", "10.2-20260526.0"), ("9", "9.8-20260526")):
        want = b.want(f"almalinux:{v}", f"rhel.{v}", unique=(release,))
        for a in (X, A, Z):
            url = ALMA.format(v=v, a=a)
            b.metadata(url, fixture(f"almalinux/almalinux{v}-{a}.checksum"))
            b.listed(want, a, url, f"AlmaLinux-{v}-GenericCloud-{release}.{a}.qcow2")
    for v in ("10", "9"):
        want = b.want(f"centos-stream:{v}", f"centos.stream{v}", unique=(f"{v}-latest",))
        current = (FIXTURES_DIR / f"centos-stream/centos-stream{v}-aarch64.checksum").read_text()
        for a in (X, A, Z):
            url = CENTOS.format(v=v, a=a)
            b.metadata(url, current.replace("aarch64", a))
            b.listed(want, a, url, f"CentOS-Stream-GenericCloud-{v}-latest.{a}.qcow2")
    ubuntu = (FIXTURES_DIR / "ubuntu/SHA256SUM").read_text()
    for v in ("26.04", "25.04", "24.04", "22.04", "20.04"):
        want = b.want(f"ubuntu:{v}", "ubuntu")
        url = UBUNTU.format(v=v)
        b.metadata(url, ubuntu.replace("22.04", v))
        for a in (X, A, Z):
            b.listed(want, a, url, f"ubuntu-{v}-server-cloudimg-{GOARCH[a]}.img")
    # Tumbleweed and MicroOS share both files (the newest snapshot, MicroOS's fixtures).
    b.metadata(TW, fixture("opensuse-microos/microos.SHA256SUM"))
    b.metadata(TW_Z, fixture("opensuse-microos/microos-s390x.SHA256SUM"))
    older = "openSUSE-Tumbleweed-Minimal-VM.x86_64-1.0.0-Cloud-Snapshot20260101.qcow2"
    b.texts[TW] += f"{'0' * 64}  {older}\n"  # listed, never served: the newest wins
    want = b.want("opensuse-tumbleweed:1.0.0", "opensuse.tumbleweed")
    b.listed(
        want, X, TW, "openSUSE-Tumbleweed-Minimal-VM.x86_64-1.0.0-Cloud-Snapshot20260207.qcow2"
    )
    b.listed(
        want,
        Z,
        TW_Z,
        "openSUSE-Tumbleweed-Minimal-VM.s390x-16.0.0-s390x-Cloud-Snapshot20260207.qcow2",
    )
    want = b.want("opensuse-microos:16.0.0", "opensuse.tumbleweed")
    b.listed(want, X, TW, "openSUSE-MicroOS.x86_64-16.0.0-OpenStack-Cloud-Snapshot20260207.qcow2")
    b.listed(want, Z, TW_Z, "openSUSE-MicroOS.s390x-16.0.0-s390x-Cloud-Snapshot20260207.qcow2")
    for v, stem, arches in (
        ("16.0", "Leap-16.0-Minimal-VM.{}-Cloud.qcow2", (X, A, Z)),
        ("15.6", "openSUSE-Leap-15.6-Minimal-VM.{}-Cloud.qcow2", (X, A)),
        ("15.5", "openSUSE-Leap-15.5-Minimal-VM.{}-Cloud.qcow2", (X, A)),
    ):
        want = b.want(f"opensuse-leap:{v}", "opensuse.leap")
        for a in arches:
            name = stem.format("s390x-s390x" if a == Z else a)
            url = LEAP.format(v=v, f=name)
            b.metadata(url, fixture(f"opensuse-leap/{name}.sha256"))
            b.listed(want, a, url, name)
    for v, codename, stamp in (
        ("11", "bullseye", "20250303-2040"),
        ("12", "bookworm", "20250210-2019"),
        ("13", "trixie", "20250814-2204"),
    ):
        want = b.want(f"debian:{v}", "debian", unique=(f"{v}-{stamp}",), latest=v == "13")
        for a in (X, A):
            goarch = GOARCH[a]
            url = f"{DEBIAN}{codename}/latest/debian-{v}-genericcloud-{goarch}.json"
            doc = json.loads(
                (FIXTURES_DIR / f"debian/debian-{v}-genericcloud-{goarch}.json").read_text()
            )
            data = b.disk(f"debian:{v}/{a}")
            for item in doc["items"]:
                if item["metadata"]["labels"].get("upload.cloud.debian.org/image-format") == (
                    "qcow2"
                ):
                    digest = base64.b64encode(hashlib.sha512(data).digest()).rstrip(b"=")
                    item["metadata"]["annotations"]["cloud.debian.org/digest"] = (
                        f"sha512:{digest.decode()}"
                    )
                    image = DEBIAN + item["data"]["ref"]
            b.texts[url] = json.dumps(doc, indent=2)
            put(root, image, data)
            # The moving file beside the JSON holds other bytes: it must not be downloaded.
            put(root, url.removesuffix(".json") + ".qcow2", b"not this one")
            want.images.append(Image(a, image, data, "sha512"))
    fedora_pref = {X: "fedora", A: "fedora.arm64", Z: "fedora.s390x"}
    items = json.loads((FIXTURES_DIR / "fedora/releases.json").read_text())
    for version, key, unique, latest in (
        ("40", "fedora:40", ("40-1.14",), True),
        ("39", "fedora:39", ("39-1.5",), False),
        ("41 Beta", "fedora:41-beta", (), False),
    ):
        want = b.want(key, fedora_pref, unique=unique, latest=latest)
        for a in (X, A, Z):
            if (version, a) == ("40", Z):
                continue  # the catalog excludes it: "cannot boot"
            for item in items:
                if (item["version"], item["arch"], item["variant"], item["subvariant"]) == (
                    version,
                    a,
                    "Cloud",
                    "Cloud_Base",
                ) and item["link"].endswith(".qcow2"):
                    data = b.disk(f"{key}/{a}")
                    item["sha256"] = sha256(data)
                    put(root, item["link"], data)
                    want.images.append(Image(a, item["link"], data))
    b.texts[RELEASES] = json.dumps(items)
    cirros = Want("cirros:6.1", None)
    for a in (X, A):
        url = f"https://download.cirros-cloud.net/0.6.1/cirros-0.6.1-{a}-disk.img"
        data = b.disk(f"cirros/{a}")
        put(root, url, data)
        cirros.images.append(Image(a, url, data))
    b.write()
    return Tree(root, b.wants, set(b.texts), cirros)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    work = tmp_path_factory.mktemp("catalog-upstream")
    return build_tree(work / "up", work / "disks")


# -- reading back, with skopeo only ---------------------------------------------------------------


class Reader:
    """skopeo on an `oci:` directory or on the registry."""

    def __init__(self, target: str) -> None:
        self.target = target

    def ref(self, name: str, tag: str) -> str:
        if self.target.startswith("oci:"):
            return f"{self.target}/{name}:{tag}"
        return f"docker://{self.target}/{name}:{tag}"

    def skopeo(self, *args: str) -> bytes:
        tls = [] if self.target.startswith("oci:") else ["--tls-verify=false"]
        return subprocess.run(
            ["skopeo", args[0], *tls, *args[1:]], capture_output=True, check=True, timeout=60
        ).stdout

    def raw(self, name: str, tag: str) -> bytes:
        return self.skopeo("inspect", "--raw", self.ref(name, tag))

    def config(self, name: str, tag: str, goarch: str) -> dict[str, Any]:
        out = self.skopeo("inspect", "--config", "--override-arch", goarch, self.ref(name, tag))
        return json.loads(out)  # type: ignore[no-any-return]

    def tags(self, name: str) -> list[str]:
        if self.target.startswith("oci:"):
            index = json.loads((Path(self.target[4:]) / name / "index.json").read_text())
            ref = "org.opencontainers.image.ref.name"
            return sorted(m["annotations"][ref] for m in index["manifests"])
        listed = json.loads(self.skopeo("list-tags", f"docker://{self.target}/{name}"))
        return sorted(listed["Tags"])

    def disk(self, name: str, tag: str, goarch: str, dest: Path) -> bytes:
        src = ["--src-tls-verify=false"] if not self.target.startswith("oci:") else []
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                *src,
                "--override-arch",
                goarch,
                self.ref(name, tag),
                f"oci:{dest}:x",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        index = json.loads((dest / "index.json").read_text())

        def blob(d: str) -> bytes:
            return (dest / "blobs/sha256" / d.split(":")[1]).read_bytes()

        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as t:
            f = t.extractfile("disk/disk.img")
            assert f is not None
            return f.read()


def push(srv: UpstreamServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "containerdisks",
            "images",
            "push",
            *args,
            "--output",
            "json",
            "--log-format",
            "json",
            "--work-dir",
            str(cwd / "work"),
            *srv.mirror_args(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=cwd,
    )


def served(url: str) -> str:
    """The server path of canonical `url`."""
    return "/" + url.split("://", 1)[1]


def check_published(
    reader: Reader, wants: list[Want], results: dict[str, Any], oci_types: bool
) -> None:
    index_type = (
        "application/vnd.oci.image.index.v1+json"
        if oci_types
        else "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    for want in wants:
        written = [t.removeprefix(f"{want.name}:") for t in results[want.key]["Tags"]]
        assert [f"{want.name}:{t}" for t in written] == results[want.key]["Tags"]
        assert re.fullmatch(rf"{re.escape(want.version)}-\d{{10}}", written[0]), written
        assert want.tags() == written[1:], want.key
        assert set(written) <= set(reader.tags(want.name)), want.key
        top = reader.raw(want.name, want.version)
        for tag in written:
            assert top == reader.raw(want.name, tag), (want.key, tag)
        index = json.loads(top)
        assert index_type == index["mediaType"], want.key
        assert [{"architecture": GOARCH[i.arch], "os": "linux"} for i in want.images] == [
            m["platform"] for m in index["manifests"]
        ], want.key
        for image in want.images:
            config = reader.config(want.name, want.version, GOARCH[image.arch])
            assert (GOARCH[image.arch], "linux") == (config["architecture"], config["os"])
            assert {
                "Entrypoint": ["no-entrypoint"],
                **({"Env": want.env(image.arch)} if want.env(image.arch) else {}),
                "Labels": {
                    "shasum": image.checksum,
                    "org.opencontainers.image.source": image.url,
                },
            } == config["config"], (want.key, image.arch)


TARGETS = pytest.mark.parametrize(
    "target",
    [
        "oci",
        pytest.param(
            "registry",
            marks=pytest.mark.skipif(
                not WRITE_SIDE,
                reason="the registry write side (oci.RegistryClient.blob_upload/put_manifest) "
                "has not landed",
            ),
        ),
    ],
)


def destination(tmp_path: Path, target: str, request: pytest.FixtureRequest) -> str:
    """Where `target` publishes: an `oci:` layout, or the real registry."""
    if target == "oci":
        return f"oci:{tmp_path / 'out'}"
    registry = request.getfixturevalue("registry")
    return f"{registry.host}/containerdisks"


@TARGETS
def test_every_catalog_entry_publishes_and_a_second_pass_downloads_no_image(
    tmp_path: Path, tree: Tree, target: str, request: pytest.FixtureRequest
) -> None:
    dest = destination(tmp_path, target, request)
    reader = Reader(dest)
    wants = list(tree.wants.values())
    images = {served(i.url) for w in wants for i in w.images}
    metadata = {served(u) for u in tree.metadata}

    with UpstreamServer(tree.root) as srv:
        first = push(srv, tmp_path, "--dry-run=false", "--source-registry", dest, "--workers", "4")
        assert 0 == first.returncode, first.stderr
        # Every image downloaded once, every metadata file read once, nothing else.
        first_paths = Counter(srv.paths())
        assert dict.fromkeys(images | metadata, 1) == dict(first_paths)

        results = json.loads((tmp_path / "results.json").read_text())
        assert {w.key for w in wants} == set(results)
        assert not any("Err" in r for r in results.values())
        check_published(reader, wants, results, target == "oci")
        # The sha512 path end to end: the disk in the image is the bytes that were verified.
        debian = tree.wants["debian:13"].images[0]
        assert debian.data == reader.disk("debian", "13", "amd64", tmp_path / "pulled")

        # Second pass: nothing changed upstream.
        srv.clear()
        second = push(srv, tmp_path, "--dry-run=false", "--source-registry", dest, "--workers", "4")
        assert 0 == second.returncode, second.stderr
        assert dict.fromkeys(metadata, 1) == dict(
            Counter(srv.paths())
        )  # one request each, no image
        plans = json.loads(second.stdout)["entries"]
        assert {"up-to-date"} == {a["action"] for p in plans for a in p["arches"]}
        assert {} == json.loads((tmp_path / "results.json").read_text())


def test_cirros_is_planned_from_the_default_catalog_without_asking_upstream(
    tmp_path: Path, tree: Tree
) -> None:
    """cirros is pinned to upstream's real checksums: planning it needs no request upstream."""
    with UpstreamServer(tree.root) as srv:
        planned = push(
            srv, tmp_path, "--focus", "cirros:6.1", "--source-registry", f"oci:{tmp_path / 'out'}"
        )
        assert 0 == planned.returncode, planned.stderr
        assert [] == srv.paths()
    (plan,) = json.loads(planned.stdout)["entries"]
    assert [
        (X, "build", "cc704ab14342c1c8a8d91b66a7fc611d921c8b8f1aaf4695f9d6463d913fa8d1"),
        (A, "build", "db9420c481c11dee17860aa46fb1a3efa05fa4fb152726d6344e24da03cb0ccf"),
    ] == [(a["arch"], a["action"], a["upstream"]) for a in plan["arches"]]


@TARGETS
def test_cirros_publishes_with_only_its_checksums_pinned_to_local_images(
    tmp_path: Path, tree: Tree, target: str, request: pytest.FixtureRequest
) -> None:
    dest = destination(tmp_path, target, request)
    entries = yaml.safe_load(CATALOG.read_text())["entries"]
    (cirros,) = (e for e in entries if e["name"] == "cirros")
    for image in tree.cirros.images:
        cirros["source"]["per_arch"][image.arch]["checksum"] = image.checksum
    config = tmp_path / "cirros.yaml"
    config.write_text(yaml.safe_dump({"entries": [cirros]}))
    with UpstreamServer(tree.root) as srv:
        pinned = push(
            srv,
            tmp_path,
            "--dry-run=false",
            "--config",
            str(config),
            "--focus",
            "cirros:6.1",
            "--source-registry",
            dest,
        )
        assert 0 == pinned.returncode, pinned.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    check_published(Reader(dest), [tree.cirros], results, target == "oci")


def test_every_catalog_entry_is_in_the_tree(tree: Tree) -> None:
    """The tests above cover the whole default catalog, every arch."""
    entries = yaml.safe_load(CATALOG.read_text())["entries"]
    fixed = {
        (f"{e['name']}:{e['version']}", a)
        for e in entries
        if "version" in e and e["name"] != "cirros"
        for a in e["arches"]
    }
    fedora = {(w.key, i.arch) for w in tree.wants.values() if w.name == "fedora" for i in w.images}
    assert fixed | fedora == {(w.key, i.arch) for w in tree.wants.values() for i in w.images}
    assert {(X, "40"), (A, "40")} <= {(a, k.split(":")[1]) for k, a in fedora}
    assert 51 == sum(len(w.images) for w in tree.wants.values())
    assert [X, A] == [i.arch for i in tree.cirros.images]
