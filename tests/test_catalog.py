"""Catalog validation, source binding, focus and the default catalog."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar

import pytest

from containerdisks.api import (
    ArchError,
    Artifact,
    DiscoveryRequest,
    Release,
    Source,
    SourceParams,
    Upstream,
)
from containerdisks.catalog import (
    ENV_INSTANCETYPE,
    ENV_PREFERENCE,
    Focus,
    ItemFailure,
    load_catalog,
    load_sources,
)
from containerdisks.settings import ConfigError


class StaticParams(SourceParams):
    url: str
    flavour: str = "plain"


class StaticSource(Source):
    """A test source: one release whose artifacts echo the per-arch parameters."""

    kind = "static-test"
    Params = StaticParams
    seen: ClassVar[list[DiscoveryRequest]] = []

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        self.seen.append(request)
        arts = []
        for arch in request.arches:
            p = request.params[arch]
            assert isinstance(p, StaticParams)
            arts.append(Artifact(arch=arch, url=f"{p.url}#{p.flavour}", checksum="0" * 64))
        return [Release(version=request.version or "1", artifacts=tuple(arts))]


class VersionsSource(StaticSource):
    kind = "versions-test"
    discovers_versions = True

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        arts = tuple(
            Artifact(arch=a, url="https://example.invalid/u", checksum="1" * 64)
            for a in request.arches
        )
        return [
            Release("41", arts, newest_stable=True),
            Release("40", arts),
            Release("42-beta", arts),
        ]


SOURCES: dict[str, Source] = {"static-test": StaticSource(), "versions-test": VersionsSource()}


def entry(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "distro",
        "version": "9",
        "arches": ["x86_64", "aarch64"],
        "source": {"kind": "static-test", "url": "https://example.org/{arch}"},
    }
    base.update(over)
    return base


def catalog(*entries: dict[str, Any]) -> Any:
    return load_catalog({"entries": list(entries)}, SOURCES, config_name="test.yaml")


def test_per_arch_parameters_override_the_base() -> None:
    c = catalog(
        entry(
            source={"kind": "static-test", "url": "u", "per_arch": {"aarch64": {"flavour": "arm"}}}
        )
    )
    params = c.items[0].request.params
    assert ("plain", "arm") == (params["x86_64"].flavour, params["aarch64"].flavour)  # type: ignore[attr-defined]


def test_env_is_sorted_and_per_arch() -> None:
    c = catalog(
        entry(instancetype="u1.medium", preference={"x86_64": "fedora", "aarch64": "fedora.arm64"})
    )
    item = c.items[0].item
    assert (f"{ENV_INSTANCETYPE}=u1.medium", f"{ENV_PREFERENCE}=fedora.arm64") == item.env(
        "aarch64"
    )
    assert () == catalog(entry()).items[0].item.env("x86_64")


def test_secure_boot_is_one_value_or_per_arch() -> None:
    everywhere = catalog(entry(secure_boot=True)).items[0].item
    assert (True, True) == (
        everywhere.secure_boot_for("x86_64"),
        everywhere.secure_boot_for("aarch64"),
    )
    per_arch = catalog(entry(secure_boot={"x86_64": True})).items[0].item
    # An arch the map leaves out boots without secure boot.
    assert (True, False) == (
        per_arch.secure_boot_for("x86_64"),
        per_arch.secure_boot_for("aarch64"),
    )
    default = catalog(entry()).items[0].item
    assert (False, False) == (default.secure_boot_for("x86_64"), default.guest_agent)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (entry(secure_boot={"s390x": True}), "secure_boot names arch 's390x' not in arches"),
        (entry(secure_boot="sometimes"), "secure_boot"),
        (entry(guest_agent="maybe"), "guest_agent"),
        (entry(version=9), "version 9 must be a quoted string"),
        (entry(version=20.10), "version 20.1 must be a quoted string"),
        (entry(arches=["x86_64", "ppc64le"]), "arches.1"),
        (entry(arches=[]), "arches must not be empty"),
        (entry(colour="red"), "colour: Extra inputs are not permitted"),
        (
            entry(source={"kind": "nope"}),
            "unknown source kind 'nope' (known: static-test, versions-test)",
        ),
        (entry(source={"kind": "static-test"}), "source.url (x86_64): Field required"),
        (
            entry(source={"kind": "static-test", "url": "u", "typo": 1}),
            "source.typo (x86_64): Extra inputs",
        ),
        (
            entry(source={"kind": "static-test", "url": "u", "per_arch": {"s390x": {}}}),
            "per_arch must map",
        ),
        (entry(preference={"s390x": "x"}), "preference names arch 's390x' not in arches"),
        (
            entry(source={"kind": "versions-test", "url": "u"}),
            "discovers versions; remove 'version'",
        ),
        (entry(version=None), "'version' is required for source 'static-test'"),
        (entry(name="Bad Name"), "name 'Bad Name' is not a valid repository name"),
    ],
)
def test_bad_entries_are_one_line_naming_the_entry(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        catalog(bad)
    text = str(err.value)
    assert text.startswith("test.yaml: entries[0]")
    assert message in text
    assert "\n" not in text


def test_duplicate_entries_are_rejected() -> None:
    with pytest.raises(ConfigError, match="distro:9 is listed twice"):
        catalog(entry(), entry())


@pytest.mark.parametrize("spec", ["fedora", ":40", "fedora:"])
def test_malformed_focus_is_a_usage_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="expected name:version or name:\\*"):
        Focus(spec)


@pytest.mark.parametrize(
    ("focus", "expected"),
    [
        ("", ["distro:9", "distro:10"]),
        ("distro:*", ["distro:9", "distro:10"]),
        ("distro:10", ["distro:10"]),
        ("testonly:*", ["testonly:1"]),
        ("testonly:1", ["testonly:1"]),
    ],
)
def test_focus_selects_items_like_medius(focus: str, expected: list[str]) -> None:
    c = catalog(
        entry(), entry(version="10"), entry(name="testonly", version="1", skip_unless_focused=True)
    )
    assert expected == [b.item.label for b in c.select(Focus(focus))]


def test_focus_matching_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="focus 'other:\\*' matches no catalog entry"):
        catalog(entry()).select(Focus("other:*"))


async def test_discovering_source_marks_only_the_newest_stable_latest() -> None:
    c = catalog(
        {
            "name": "fed",
            "arches": ["x86_64"],
            "latest": True,
            "docs": True,
            "source": {"kind": "versions-test", "url": "u"},
        }
    )
    result = await c.discover(c.items[0], None, Focus(""))  # type: ignore[arg-type]
    assert not isinstance(result, ItemFailure)
    assert [("fed:41", True, True), ("fed:40", False, False), ("fed:42-beta", False, False)] == [
        (e.key, e.latest, e.docs) for e in result
    ]
    focused = await c.discover(c.items[0], None, Focus("fed:40"))  # type: ignore[arg-type]
    assert ["fed:40"] == [e.key for e in focused]  # type: ignore[union-attr]


def test_builtin_sources_come_from_entry_points() -> None:
    sources = load_sources()
    assert {"fedora", "checksum-file"} <= set(sources)
    assert sources["fedora"].discovers_versions
    assert not sources["checksum-file"].discovers_versions


def test_default_catalog_validates_with_the_installed_plugins() -> None:
    c = load_catalog(None)
    labels = [b.item.label for b in c.items]
    assert "centos-stream:9" in labels
    assert "fedora:*" in labels


def test_config_entries_replace_or_extend_the_default_catalog() -> None:
    sources = {**load_sources(), **SOURCES}
    replaced = load_catalog({"entries": [entry()]}, sources)
    extended = load_catalog({"catalog": "extend", "entries": [entry()]}, sources)
    assert ["distro:9"] == [b.item.label for b in replaced.items]
    assert "distro:9" in [b.item.label for b in extended.items]
    assert len(extended.items) == len(load_catalog(None).items) + 1


REPO_DOCS = {"title": "Distro", "homepage": "https://distro.example/", "description": "A distro."}


def test_repositories_of_a_replacing_file_are_its_own() -> None:
    c = load_catalog(
        {"entries": [entry()], "repositories": {"distro": REPO_DOCS}}, SOURCES, config_name="t"
    )
    assert ["distro"] == list(c.repositories)
    assert ("Distro", None) == (c.repositories["distro"].title, c.repositories["distro"].logo)


def test_a_file_with_only_repositories_rewords_the_default_catalog() -> None:
    c = load_catalog({"repositories": {"fedora": REPO_DOCS}}, load_sources())
    default = load_catalog(None, load_sources())
    assert [b.item.label for b in default.items] == [b.item.label for b in c.items]
    assert "Distro" == c.repositories["fedora"].title
    assert default.repositories["debian"] == c.repositories["debian"]


def test_an_extending_file_lays_its_repositories_over_the_default() -> None:
    c = load_catalog({"catalog": "extend", "repositories": {"mine": REPO_DOCS}}, load_sources())
    assert {"mine", "fedora", "centos-stream"} <= set(c.repositories)


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        (
            {**REPO_DOCS, "homepage": "distro.example"},
            "homepage 'distro.example' is not an absolute",
        ),
        ({**REPO_DOCS, "logo": "/logo.png"}, "logo '/logo.png' is not an absolute"),
        ({**REPO_DOCS, "colour": "red"}, "repositories.distro.colour: Extra inputs"),
        ({"title": "Distro", "homepage": "https://d.example/"}, "repositories.distro.description"),
    ],
)
def test_bad_repository_docs_are_one_line(docs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_catalog(
            {"entries": [entry()], "repositories": {"distro": docs}}, SOURCES, config_name="t.yaml"
        )
    assert message in str(err.value)
    assert str(err.value).startswith("t.yaml: ")


# -- one bad source fails only its own item ---------------------------------------------------


class HostileSource(StaticSource):
    """A source that misbehaves as `behaviour` (a class attribute set per test) says."""

    kind = "hostile-test"
    behaviour: ClassVar[str] = ""

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        art = Artifact(arch="x86_64", url="https://example.org/x.qcow2", checksum="0" * 64)
        match self.behaviour:
            case "recursion":
                return [json.loads("[" * 100_000 + "]" * 100_000)]
            case "huge-int":
                return [Release(str(int("9" * 5000)), (art,))]
            case "own-timeout":
                raise TimeoutError("a timeout of the source's own")
            case "hang":
                await asyncio.sleep(3600)
            case "not-a-list":
                return "releases"  # type: ignore[return-value]
            case "nul-version":
                return [Release("1\x00", (art,))]
            case "long-version":
                return [Release("1" * 129, (art,))]
            case "bad-artifact":
                return [Release("1", ("x86_64",))]  # type: ignore[arg-type]
            case "invalid-tag":
                return [Release("1 beta", (art, ArchError("aarch64", "missing")))]
            case "invalid-unique-tag":
                bad = Artifact("x86_64", art.url, art.checksum, unique_tags=("1\x00x",))
                return [Release("1", (bad, ArchError("aarch64", "missing")))]
            case "foreign-arch":
                return [Release("1", (ArchError("s390x", "not asked for"),))]
        raise AssertionError(self.behaviour)


def hostile_catalog() -> Any:
    entries = [entry(arches=["x86_64", "aarch64"], source={"kind": "hostile-test", "url": "u"})]
    return load_catalog({"entries": entries}, {"hostile-test": HostileSource()})


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            "recursion",
            "source 'hostile-test' failed: RecursionError: maximum recursion depth exceeded "
            "while decoding a JSON array from a unicode string",
        ),
        ("huge-int", "source 'hostile-test' failed: ValueError: Exceeds the limit (4300 digits)"),
        (
            "own-timeout",
            "source 'hostile-test' failed: TimeoutError: a timeout of the source's own",
        ),
        ("hang", "source 'hostile-test': discovery took longer than 0.2 s (discovery_timeout)"),
        ("not-a-list", "source 'hostile-test' returned str, not Releases"),
        ("nul-version", "source 'hostile-test': release version '1\\x00' is not printable"),
        ("long-version", f"source 'hostile-test': release version '{'1' * 64}' is invalid"),
        (
            "bad-artifact",
            "source 'hostile-test': release '1' has artifacts of another type or arch",
        ),
        (
            "foreign-arch",
            "source 'hostile-test': release '1' has artifacts of another type or arch",
        ),
    ],
)
async def test_anything_a_source_does_wrong_is_one_line_for_its_item(
    behaviour: str, message: str
) -> None:
    HostileSource.behaviour = behaviour
    c = hostile_catalog()
    started = time.monotonic()
    result = await c.discover(c.items[0], None, Focus(""), time_limit=0.2)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5
    assert isinstance(result, ItemFailure)
    assert "distro:9" == result.key
    assert result.message.startswith(message), result.message
    assert result.message.isprintable()
    assert len(result.message) <= 1000


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("invalid-tag", "version '1 beta' is not a valid tag"),
        ("invalid-unique-tag", "unique tag '1\\x00x' is not a valid tag"),
    ],
)
async def test_under_a_version_or_unique_tag_that_is_no_tag_nothing_is_published(
    behaviour: str, message: str
) -> None:
    HostileSource.behaviour = behaviour
    c = hostile_catalog()
    result = await c.discover(c.items[0], None, Focus(""))  # type: ignore[arg-type]
    assert not isinstance(result, ItemFailure)
    (found,) = result
    assert (ArchError("x86_64", message), ArchError("aarch64", "missing")) == found.artifacts


def test_an_extending_entry_overrides_the_default_entry_of_its_name_and_version() -> None:
    """Narrow centos-stream:9 to one arch and point its source elsewhere; the rest is kept."""
    sources = load_sources()
    default = {b.item.label: b for b in load_catalog(None, sources).items}
    narrowed = {
        "name": "centos-stream",
        "version": "9",
        "arches": ["x86_64"],
        "source": {
            "kind": "static",
            "url": "http://mirror.internal/cs9.qcow2",
            "checksum": "a" * 64,
        },
    }
    c = load_catalog({"catalog": "extend", "entries": [narrowed]}, sources)
    labels = [b.item.label for b in c.items]
    assert list(default) == labels  # same entries, in the same place
    item = c.items[labels.index("centos-stream:9")].item
    before = default["centos-stream:9"].item
    assert ("x86_64",) == item.arches
    assert "static" == item.source["kind"]
    assert (before.user, before.preference, before.docs) == (item.user, item.preference, item.docs)
    assert before.env("x86_64") == item.env("x86_64")


def test_an_override_narrowing_arches_narrows_the_per_arch_maps_it_inherits() -> None:
    """fedora:* has per-arch preference and secure_boot; `arches` alone narrows them."""
    sources = load_sources()
    only = {"name": "fedora", "arches": ["aarch64"]}
    c = load_catalog({"catalog": "extend", "entries": [only]}, sources)
    (fedora,) = [b.item for b in c.items if b.item.label == "fedora:*"]
    assert ("aarch64",) == fedora.arches
    assert {"aarch64": "fedora.arm64"} == fedora.preference
    assert {"aarch64": True} == fedora.secure_boot


def test_an_entry_listed_twice_in_one_file_stays_an_error() -> None:
    twice = [{"name": "fedora", "arches": ["x86_64"]}, {"name": "fedora", "arches": ["s390x"]}]
    with pytest.raises(ConfigError, match=r"^t.yaml: catalog entry fedora:\* is listed twice$"):
        load_catalog({"catalog": "extend", "entries": twice}, load_sources(), config_name="t.yaml")


def test_a_bad_override_names_the_config_file_entry() -> None:
    bad = {"name": "centos-stream", "version": "9", "arches": ["ppc64le"]}
    with pytest.raises(ConfigError, match=r"^t.yaml: entries\[0\] \(centos-stream:9\): arches"):
        load_catalog({"catalog": "extend", "entries": [bad]}, load_sources(), config_name="t.yaml")
