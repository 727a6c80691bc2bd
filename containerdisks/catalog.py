"""The catalog: which entries to publish, and the sources (plugins) that discover them.

The catalog file says *what* (name, version, arches, env, user, tag policy, which source with
which parameters); sources say *how*. Sources are loaded from the `containerdisks.plugins`
entry-point group, the built-ins exactly like third-party ones, and checked against the contract
in `containerdisks.api` when loaded. Nothing here names a distribution.

Decisions:
- Items are validated up front (pydantic, unknown keys rejected, each source's own parameter
  model applied per arch), so a catalog typo is a configuration error (exit 2) before any network.
- Versions must be quoted strings: YAML reads `20.10` as the number 20.1.
- Focus is a union of `name:version` / `name:*` terms (`--focus a:1,b:*`, or the flag repeated),
  applied in two steps: on names before discovery (so `--focus 'fedora:*'` asks nothing of
  other distributions), then on versions after discovery for sources that discover versions. A
  term that selects nothing is a usage error, so a typo in one term is never silently dropped.
- The default catalog lives in `config/catalog.yaml` and is installed with the package.
- What a repository's docs page says about the distribution (title, site, logo, description)
  belongs to the repository, not to one `name:version` item: it is the catalog file's
  `repositories` map, by name. A config file's `repositories` are laid over the default
  catalog's one name at a time, and a file that gives only `repositories` keeps the default
  entries, so a description can be reworded without restating the catalog.
- `signature: required | none` is per item: `required` makes the source read its checksums only
  through `Upstream.fetch_signed` with the keyring its parameters name, and an arch without a
  good signature fails. Unset, it is `required` when the source's parameters name a keyring
  (`SourceParams.signing_keys`: the distribution signs) and `none` otherwise; `required` for a
  source that names none is a configuration error. `load_catalog(signatures=False)` (the
  setting `upstream_signatures: false`) makes every item `none`.
- One item's discovery cannot fail another's: `Catalog.discover` runs under its own deadline
  (the setting `discovery_timeout`) and turns anything a source raises (a `SourceError`, or a
  bug: RecursionError, ValueError, ...) or returns that breaks the contract into an
  `ItemFailure`, one printable line naming the item. A release version must be printable and
  at most 128 characters and its artifacts of the requested arches; under a version or a unique
  tag that is no valid tag no artifact is published (that arch becomes an `ArchError`).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from containerdisks.api import (
    ArchError,
    Artifact,
    DiscoveryRequest,
    Release,
    SignaturePolicy,
    Source,
    SourceError,
    SourceParams,
    Upstream,
)
from containerdisks.settings import ConfigError
from containerdisks.yamlfile import YamlFileError, read_yaml_file

__all__ = [
    "ENV_INSTANCETYPE",
    "ENV_PREFERENCE",
    "Catalog",
    "CatalogItem",
    "Entry",
    "Focus",
    "ItemFailure",
    "RepositoryDocs",
    "default_catalog_path",
    "focus_error",
    "load_catalog",
    "load_sources",
    "one_line",
]

PLUGIN_GROUP = "containerdisks.plugins"
ENV_INSTANCETYPE = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE"
ENV_PREFERENCE = "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE"

Arch = Literal["x86_64", "aarch64", "s390x"]
PerArch = str | dict[Arch, str]
PerArchBool = bool | dict[Arch, bool]
_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: A valid image tag (the OCI distribution spec's rule).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
#: The longest error line an item failure carries.
_LONGEST_MESSAGE = 1000


class CatalogItem(BaseModel):
    """One catalog item: a `name:version` entry, or a name whose versions a source discovers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Repository name under the registry namespace.")
    version: str | None = Field(
        None, description="Version tag (a quoted string); omitted when the source discovers them."
    )
    arches: tuple[Arch, ...] = Field(description="Upstream arch names, in index order.")
    instancetype: PerArch | None = Field(
        None, description="Default instancetype env value, one for all arches or per arch."
    )
    preference: PerArch | None = Field(
        None, description="Default preference env value, one for all arches or per arch."
    )
    user: str | None = Field(None, description="Default login user of the image (docs, verify).")
    secure_boot: PerArchBool = Field(
        False,
        description="The image boots with UEFI secure boot (and SMM): one value, or per arch "
        "(an arch left out is false).",
    )
    guest_agent: bool = Field(
        False, description="The image runs the QEMU guest agent (verify asks it for guest info)."
    )
    latest: bool = Field(
        False,
        description="Also tag `latest` (for a discovering source: its newest stable version).",
    )
    docs: bool = Field(
        False,
        description="Use for the repository's docs (for a discovering source: newest stable).",
    )
    skip_unless_focused: bool = Field(False, description="Only published when focused by name.")
    keep_timestamp_tags: int | None = Field(
        None,
        ge=0,
        description="Retention for this entry: keep the newest N `<version>-<YYMMDDhhmm>` tags "
        "(0 keeps all); unset uses the setting `keep_timestamp_tags`.",
    )
    signature: SignaturePolicy | None = Field(
        None,
        description="Upstream OpenPGP signature policy: `required` (checksums only from data "
        "signed by a pinned key of the distribution) or `none`; unset: `required` when the "
        "source names a keyring (`keys`), else `none`.",
    )
    source: dict[str, Any] = Field(
        description="`kind` plus the source's parameters; `per_arch: {arch: {...}}` overrides."
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_string(cls, v: object) -> object:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"version {v!r} must be a quoted string (YAML reads 20.10 as 20.1)")
        return v

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name {v!r} is not a valid repository name")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> CatalogItem:
        if not self.arches:
            raise ValueError("arches must not be empty")
        if len(set(self.arches)) != len(self.arches):
            raise ValueError("arches must not repeat")
        if self.version is not None and not _VERSION.match(self.version):
            raise ValueError(f"version {self.version!r} is not a valid tag")
        for field in ("instancetype", "preference", "secure_boot"):
            value = getattr(self, field)
            if isinstance(value, dict) and set(value) - set(self.arches):
                extra = sorted(set(value) - set(self.arches))[0]
                raise ValueError(f"{field} names arch {extra!r} not in arches")
        if "kind" not in self.source or not isinstance(self.source["kind"], str):
            raise ValueError("source.kind is required")
        return self

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version or '*'}"

    def keep_for(self, default: int) -> int:
        """How many timestamp tags retention keeps for this item (0: all)."""
        return default if self.keep_timestamp_tags is None else self.keep_timestamp_tags

    def secure_boot_for(self, arch: str) -> bool:
        """Whether the image boots with secure boot on `arch` (per-arch map: absent is false)."""
        if isinstance(self.secure_boot, dict):
            return self.secure_boot.get(arch, False)  # type: ignore[call-overload,no-any-return]
        return self.secure_boot

    def env(self, arch: str) -> tuple[str, ...]:
        """The image env for an arch, sorted (reproducible config digests)."""
        out = []
        for key, value in (
            (ENV_INSTANCETYPE, self.instancetype),
            (ENV_PREFERENCE, self.preference),
        ):
            v = value.get(arch) if isinstance(value, dict) else value  # type: ignore[call-overload]
            if v:
                out.append(f"{key}={v}")
        return tuple(sorted(out))


def _absolute_url(field: str, v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{field} {v!r} is not an absolute http(s) URL")
    return v


class RepositoryDocs(BaseModel):
    """What a repository's docs page says about its distribution (`docs publish`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(
        min_length=1, description="Display name of the distribution (`CentOS Stream`)."
    )
    homepage: str = Field(description="The distribution's website (absolute URL), linked.")
    logo: str | None = Field(None, description="Absolute URL of a logo image shown by the title.")
    description: str = Field(
        min_length=1, description="Markdown: what the distribution and these images are."
    )

    @field_validator("homepage")
    @classmethod
    def _homepage_url(cls, v: str) -> str:
        return _absolute_url("homepage", v)

    @field_validator("logo")
    @classmethod
    def _logo_url(cls, v: str | None) -> str | None:
        return None if v is None else _absolute_url("logo", v)


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog: Literal["replace", "extend"] = "replace"
    entries: list[dict[str, Any]] = Field(default_factory=list)
    repositories: dict[str, RepositoryDocs] = Field(default_factory=dict)


@dataclass(frozen=True)
class BoundItem:
    """A catalog item with its source instance and validated per-arch parameters."""

    item: CatalogItem
    source: Source
    request: DiscoveryRequest


@dataclass(frozen=True)
class Entry:
    """One `name:version` to publish, as discovered: the unit of planning and publishing."""

    item: CatalogItem
    version: str
    artifacts: tuple[Artifact | ArchError, ...]
    latest: bool
    docs: bool

    @property
    def name(self) -> str:
        return self.item.name

    @property
    def key(self) -> str:
        return f"{self.item.name}:{self.version}"

    @property
    def arches(self) -> tuple[str, ...]:
        return tuple(a.arch for a in self.artifacts)


@dataclass(frozen=True)
class ItemFailure:
    """Discovery of a whole item failed; recorded under `name:version` or `name:*`.

    `crashed` names the exception type when the source raised something other than a
    `SourceError` (a bug in it, or data it did not expect), for a debug log line."""

    key: str
    message: str
    crashed: str | None = None


def one_line(text: str) -> str:
    """`text` as one printable line: control and other unprintable characters escaped, cut to
    a bounded length (an error may quote upstream data)."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: _LONGEST_MESSAGE * 2])
    return out if len(out) <= _LONGEST_MESSAGE else out[: _LONGEST_MESSAGE - 1] + "…"


class Focus:
    """`--focus`: empty (everything not marked skip_unless_focused), or a union of terms, each
    `name:*` or `name:version`, comma-separated (a repeated `--focus` is joined with commas;
    an empty term adds nothing)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        terms: list[tuple[str, str | None]] = []
        for term in (t.strip() for t in spec.split(",")):
            if not term:
                continue
            name, sep, version = term.partition(":")
            if not sep or not name or not version:
                raise ConfigError(
                    f"invalid flag --focus {term!r}: expected name:version or name:* "
                    "(several: comma-separated or the flag repeated)"
                )
            terms.append((name, None if version == "*" else version))
        #: (name, version or None for `name:*`), each once, in the order given.
        self.terms: tuple[tuple[str, str | None], ...] = tuple(dict.fromkeys(terms))

    @property
    def given(self) -> bool:
        """Whether any entry was named (an empty focus selects every entry)."""
        return bool(self.terms)

    @staticmethod
    def label(term: tuple[str, str | None]) -> str:
        return f"{term[0]}:{term[1] or '*'}"

    def selects_item(self, item: CatalogItem) -> bool:
        if not self.terms:
            return not item.skip_unless_focused
        return any(self._term_selects_item(t, item) for t in self.terms)

    @staticmethod
    def _term_selects_item(term: tuple[str, str | None], item: CatalogItem) -> bool:
        name, version = term
        return item.name == name and (
            item.version is None or version is None or item.version == version
        )

    def selects_key(self, name: str, version: str) -> bool:
        """For a key `name:version` (a discovered release; the later stages' results file)."""
        return not self.terms or any(
            n == name and (v is None or v == version) for n, v in self.terms
        )

    def unmatched(self, items: Iterable[CatalogItem]) -> list[str]:
        """The terms that select none of `items` (each is a usage error where it is checked)."""
        chosen = list(items)
        return [
            self.label(t)
            for t in self.terms
            if not any(self._term_selects_item(t, item) for item in chosen)
        ]


def focus_error(unmatched: Sequence[str]) -> str:
    """The one line for focus terms that match no catalog entry."""
    verb = "matches" if len(unmatched) == 1 else "match"
    return f"focus {', '.join(map(repr, unmatched))} {verb} no catalog entry"


def load_sources() -> dict[str, Source]:
    """Load every source registered under the plugin entry-point group, checked on the way."""
    sources: dict[str, Source] = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken third-party plugin must not crash with a traceback
            raise ConfigError(f"plugin {ep.name!r} ({ep.value}) failed to load: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Source)):
            raise ConfigError(f"plugin {ep.name!r} ({ep.value}) is not a containerdisks.api.Source")
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, SourceParams)):
            raise ConfigError(f"plugin {ep.name!r}: Params must subclass api.SourceParams")
        if getattr(cls, "kind", None) != ep.name:
            raise ConfigError(f"plugin {ep.name!r}: its kind is {getattr(cls, 'kind', None)!r}")
        if ep.name in sources:
            raise ConfigError(f"two plugins register the source kind {ep.name!r}")
        sources[ep.name] = cls()
    return sources


def default_catalog_path() -> Path:
    """The installed default catalog (a wheel carries it as package data)."""
    packaged = importlib.resources.files("containerdisks") / "data" / "catalog.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    # An editable checkout: the catalog sits in the source tree's config/ directory.
    return Path(__file__).resolve().parent.parent / "config" / "catalog.yaml"


class Catalog:
    """The validated catalog with its sources bound."""

    def __init__(
        self, items: Iterable[BoundItem], repositories: Mapping[str, RepositoryDocs] | None = None
    ) -> None:
        self.items = tuple(items)
        #: Docs content per repository name (the catalog file's `repositories`).
        self.repositories: Mapping[str, RepositoryDocs] = dict(repositories or {})

    def select(self, focus: Focus) -> list[BoundItem]:
        """The items `focus` selects; a term of it that selects none is a usage error."""
        unmatched = focus.unmatched(b.item for b in self.items)
        if unmatched:
            raise ConfigError(focus_error(unmatched))
        return [b for b in self.items if focus.selects_item(b.item)]

    async def discover(
        self, bound: BoundItem, upstream: Upstream, focus: Focus, *, time_limit: float | None = None
    ) -> list[Entry] | ItemFailure:
        """Discover one item's entries within `time_limit` seconds (None: none); a failure,
        whatever the source raised, is a value naming the item."""
        item = bound.item
        kind = bound.source.kind
        deadline = asyncio.timeout(time_limit)
        try:
            async with deadline:
                releases = await bound.source.discover(bound.request, upstream)
            return [
                self._entry(bound, release)
                for release in _checked(kind, bound.request.arches, releases)
                if focus.selects_key(item.name, release.version)
            ]
        except SourceError as e:
            return ItemFailure(item.label, one_line(str(e)))
        except TimeoutError as e:
            if not deadline.expired():
                return _crashed(item, kind, e)
            message = f"source {kind!r}: discovery took longer than {time_limit:g} s"
            return ItemFailure(item.label, message + " (discovery_timeout)")
        except Exception as e:  # a bug in a source fails its item, not the pass
            return _crashed(item, kind, e)

    @staticmethod
    def _entry(bound: BoundItem, release: Release) -> Entry:
        item = bound.item
        discovering = item.version is None
        mark = release.newest_stable if discovering else True
        return Entry(
            item=item,
            version=release.version,
            artifacts=release.artifacts,
            latest=item.latest and mark,
            docs=item.docs and mark,
        )


def _crashed(item: CatalogItem, kind: str, e: Exception) -> ItemFailure:
    message = f"source {kind!r} failed: {type(e).__name__}"
    detail = str(e)
    return ItemFailure(
        item.label, one_line(f"{message}: {detail}" if detail else message), type(e).__name__
    )


def _checked(kind: str, arches: tuple[str, ...], releases: object) -> list[Release]:
    """The releases a source returned, held to the contract; `SourceError` saying how not.

    An artifact of a version or with a unique tag that is no valid tag becomes an `ArchError`
    (nothing is published under it); one of an arch not asked for breaks the contract."""
    if not isinstance(releases, list) or not all(isinstance(r, Release) for r in releases):
        raise SourceError(f"source {kind!r} returned {type(releases).__name__}, not Releases")
    out = []
    for release in releases:
        version = release.version
        if not isinstance(version, str) or not version or len(version) > 128:
            raise SourceError(f"source {kind!r}: release version {str(version)[:64]!r} is invalid")
        if not version.isprintable():
            raise SourceError(f"source {kind!r}: release version {version!r} is not printable")
        artifacts = release.artifacts
        if not isinstance(artifacts, tuple) or not all(
            isinstance(a, Artifact | ArchError) and a.arch in arches for a in artifacts
        ):
            raise SourceError(
                f"source {kind!r}: release {version!r} has artifacts of another type or arch"
            )
        checked = tuple(_tags_checked(version, a) for a in artifacts)
        out.append(
            release if checked == artifacts else Release(version, checked, release.newest_stable)
        )
    return out


def _tags_checked(version: str, a: Artifact | ArchError) -> Artifact | ArchError:
    if isinstance(a, ArchError):
        return a
    if not _TAG.fullmatch(version):
        return ArchError(a.arch, f"version {version!r} is not a valid tag")
    bad = [t for t in a.unique_tags if not isinstance(t, str) or not _TAG.fullmatch(t)]
    if bad or not isinstance(a.unique_tags, tuple):
        return ArchError(
            a.arch, f"unique tag {str(bad[0] if bad else a.unique_tags)[:140]!r} is not a valid tag"
        )
    return a


def load_catalog(
    config: Mapping[str, Any] | None,
    sources: Mapping[str, Source] | None = None,
    *,
    config_name: str = "config file",
    signatures: bool = True,
) -> Catalog:
    """Build the catalog: the default one, replaced or extended by the config file's entries.

    Extending, an entry with the `name:version` (`name:*` for a discovering source) of a default
    entry overrides it in its place (`override`); others are added at the end.
    `signatures=False` makes every item's signature policy `none`."""
    sources = load_sources() if sources is None else sources
    repositories: dict[str, RepositoryDocs] = {}
    config = config or {}
    user = _parse_file(config, config_name)
    # A file with only `repositories` rewords docs; it keeps the default entries.
    replaces = (
        user is not None and user.catalog == "replace" and bool(_CATALOG_ENTRY_KEYS & set(config))
    )
    items: list[BoundItem] = []
    if not replaces:
        path = default_catalog_path()
        default = _parse_file(_read_yaml(path), str(path))
        items = _bound_list(
            str(path), default.entries if default else [], sources, signatures=signatures
        )
        repositories.update(default.repositories if default else {})
    if user is not None:
        position = {b.item.label: i for i, b in enumerate(items)}
        for b in _bound_list(
            config_name, user.entries, sources, over=tuple(items), signatures=signatures
        ):
            if b.item.label in position:  # `catalog: extend` overrides a default entry
                items[position[b.item.label]] = b
            else:
                items.append(b)
        repositories.update(user.repositories)
    return Catalog(items, repositories)


def _bound_list(
    origin: str,
    entries: list[dict[str, Any]],
    sources: Mapping[str, Source],
    *,
    over: Sequence[BoundItem] = (),
    signatures: bool = True,
) -> list[BoundItem]:
    """One file's entries, bound; an entry whose `name:version` is one of `over`'s is laid over
    it (`override`). The same `name:version` twice in one file is an error."""
    base = {b.item.label: b.item for b in over}
    items = []
    seen: set[str] = set()
    for i, data in enumerate(entries):
        default = base.get(_label_of(data) or "")
        merged = override(default, data) if default is not None else data
        b = _bind(origin, i, merged, sources, signatures=signatures)
        if b.item.label in seen:
            raise ConfigError(f"{origin}: catalog entry {b.item.label} is listed twice")
        seen.add(b.item.label)
        items.append(b)
    return items


def _label_of(data: object) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    version = data.get("version")
    return f"{data['name']}:{version if isinstance(version, str) else '*'}"


#: Per-arch maps of an entry: an override that narrows `arches` narrows those it inherits.
_PER_ARCH_FIELDS = ("instancetype", "preference", "secure_boot")


def override(default: CatalogItem, data: dict[str, Any]) -> dict[str, Any]:
    """A `catalog: extend` entry laid over the default entry of the same `name:version`.

    The merge rule (docs/catalog.md): every field the override gives replaces the default's
    whole (`source` too: no deep merge, since another `kind` has other parameters); every field
    it leaves out is the default's. When the override gives `arches`, the per-arch maps it
    inherits (`instancetype`, `preference`, `secure_boot`, `source.per_arch`) keep only those
    arches, so narrowing an entry needs nothing but `arches`."""
    merged = {**default.model_dump(exclude_unset=True), **data}
    if "arches" not in data or not isinstance(data["arches"], list):
        return merged
    arches = set(data["arches"])
    for field in _PER_ARCH_FIELDS:
        value = merged.get(field)
        if field not in data and isinstance(value, dict):
            merged[field] = {a: v for a, v in value.items() if a in arches}
    source = merged.get("source")
    if "source" in data or not isinstance(source, dict):
        return merged
    if isinstance(source.get("per_arch"), dict):
        per_arch = {a: v for a, v in source["per_arch"].items() if a in arches}
        merged["source"] = {**source, "per_arch": per_arch}
    return merged


#: Keys of a config file that replace (or explicitly extend) the default catalog's entries.
_CATALOG_ENTRY_KEYS = frozenset({"entries", "catalog"})


def _parse_file(data: Mapping[str, Any], name: str) -> _CatalogFile | None:
    catalog_part = {
        k: v for k, v in data.items() if k in _CATALOG_ENTRY_KEYS or k == "repositories"
    }
    if not catalog_part:
        return None
    try:
        return _CatalogFile.model_validate(catalog_part)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{name}: {loc}: {err['msg']}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = read_yaml_file(path)
    except OSError as e:
        raise ConfigError(f"default catalog {path}: {e.strerror or e}") from None
    except YamlFileError as e:
        raise ConfigError(f"default catalog {path}: {e}") from None
    return data if isinstance(data, dict) else {}


def _bind(
    origin: str,
    index: int,
    data: dict[str, Any],
    sources: Mapping[str, Source],
    *,
    signatures: bool = True,
) -> BoundItem:
    where = f"{origin}: entries[{index}]"
    if isinstance(data, dict) and "name" in data:
        where += f" ({data['name']}:{data.get('version', '*')})"
    try:
        item = CatalogItem.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{where}: {loc + ': ' if loc else ''}{err['msg']}") from None
    kind = item.source["kind"]
    source = sources.get(kind)
    if source is None:
        known = ", ".join(sorted(sources)) or "none"
        raise ConfigError(f"{where}: unknown source kind {kind!r} (known: {known})")
    if source.discovers_versions and item.version is not None:
        raise ConfigError(f"{where}: source {kind!r} discovers versions; remove 'version'")
    if not source.discovers_versions and item.version is None:
        raise ConfigError(f"{where}: 'version' is required for source {kind!r}")
    base = {k: v for k, v in item.source.items() if k not in ("kind", "per_arch")}
    per_arch = item.source.get("per_arch") or {}
    if not isinstance(per_arch, dict) or set(per_arch) - set(item.arches):
        raise ConfigError(f"{where}: source.per_arch must map arches of this entry to parameters")
    params: dict[str, SourceParams] = {}
    for arch in item.arches:
        try:
            params[arch] = type(source).Params.model_validate({**base, **per_arch.get(arch, {})})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"{where}: source.{loc} ({arch}): {err['msg']}") from None
    keys = {p.signing_keys() for p in params.values()}
    if item.signature == "required" and None in keys:
        raise ConfigError(
            f"{where}: signature: required, but source {kind!r} names no keyring (`keys`) "
            "to verify with"
        )
    policy: SignaturePolicy = item.signature or ("none" if None in keys else "required")
    request = DiscoveryRequest(
        name=item.name,
        version=item.version,
        arches=item.arches,
        params=params,
        signature=policy if signatures else "none",
    )
    return BoundItem(item=item, source=source, request=request)
