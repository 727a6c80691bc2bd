"""Fedora: discover the Cloud Base qcow2 images of every current release from `releases.json`.

One job: turn Fedora's `releases.json` (an array of `{version, arch, link, variant, subvariant,
sha256, size}`) into one `Release` per Fedora version, with the verified download of each arch.

Decisions that shaped it (medius's rules, with its bugs fixed):
- A release item is kept when the first field of its version is an integer >= `min_version`, its
  arch is requested, `variant` *and* `subvariant` match (medius did not check the subvariant and
  relied on `Cloud_Base` preceding `Cloud_Base_UKI` in the file), its link ends in `qcow2`, and
  `"<version>/<arch>"` is not in `exclude` (the default catalog excludes `40/s390x`: those images
  cannot boot). When several items still match one version and arch, the first one wins.
- The arch set of a release is what Fedora publishes for it: a `Release` lists, in request order,
  only the requested arches that `releases.json` has for that version (after `exclude`). An arch
  Fedora does not publish, or that the catalog excludes, is left out rather than reported as an
  error, so `fedora:40` is published without s390x and a Beta with the arches it has, as medius
  does. An arch that *is* published but cannot be verified is an `ArchError`: the entry waits.
- Versions are ordered numerically (medius compared strings, so "100" sorted below "99"): stable
  (integer) versions first, newest first, then pre-releases ("41 Beta"), newest first. Only the
  highest stable version is `newest_stable`. A version is normalised for use as a tag: lowercase,
  spaces to `-` (`41 Beta` -> `41-beta`); a version that still is no valid tag gives an
  `ArchError` for each of its arches rather than vanishing.
- An item's `size` (a string of digits in releases.json) is the download's size: it becomes
  `Artifact.size`, and a larger download is refused. A size that is not 1 to 20 digits is
  ignored (the download is still bounded by `max_image_bytes`), not an error: Fedora adds it
  for humans, and a bad one must not hide an image whose checksum is fine.
- Stable releases carry the unique tag found in the image file name by `\\d+-\\d+\\.\\d+`
  (`...x86_64-40-1.14.qcow2` -> `40-1.14`); pre-releases carry none.
- Never publish unverified bytes. An empty (or absent) `sha256` happens for pre-releases and
  sometimes for stable releases (medius #366, where medius published a checksum it computed
  itself). Then the checksum comes from the clearsigned CHECKSUM file Fedora publishes in the
  image's directory, parsed as BSD lines. Its name is derived from the image name: the release
  id `<version>[_<Milestone>]-<compose>` (`40-1.14`, `41_Beta-1.2`) and the item's variant and
  arch give `Fedora-<variant>-<release id>-<arch>-CHECKSUM`, e.g.
  `Fedora-Cloud-Base-Generic.x86_64-40-1.14.qcow2` -> `Fedora-Cloud-40-1.14-x86_64-CHECKSUM`,
  `Fedora-Cloud-Base-39-1.5.x86_64.qcow2` -> `Fedora-Cloud-39-1.5-x86_64-CHECKSUM`, and
  `Fedora-Cloud-Base-Generic-41_Beta-1.2.x86_64.qcow2`
  -> `Fedora-Cloud-41_Beta-1.2-x86_64-CHECKSUM`.
  When that file cannot be read (404 or any other failure) or does not list the image, the arch
  is an `ArchError` naming the arch and both URLs. A non-empty `sha256` that is not 64 hex digits
  is an `ArchError` too (it is not silently replaced by the CHECKSUM file).
- Upstream signatures: under the catalog's `signature: required` (the default, since `keys`
  names the keyring `fedora-{major}`: Fedora signs each release's CHECKSUM with that release's
  key, and version N is verified with key N only), releases.json is only the discovery hint:
  the checksum always comes from the clearsigned CHECKSUM beside the image, read from the text
  the signature covers, for exactly the image's file name; a `sha256` in releases.json that
  disagrees with it is an `ArchError`. The artifact's evidence is that signature.
- `releases.json` that is not JSON, not an array, or has an item without the string fields
  `version`, `arch`, `link`, `variant`, `subvariant` is a `SourceError` (one line, with the URL):
  the whole source fails rather than guess. `sha256` may be missing (Fedora omits it for some
  non-cloud artifacts); it is then treated as empty. A field with a control character, or
  longer than Fedora ever writes (`version`, `arch`, `variant`, `subvariant` and `sha256` 128
  characters, `link` 2048), makes the file malformed in the same way: upstream strings are data,
  and a NUL in a link or a 5000-digit version is no Fedora release.
- The image file name (the link's last segment) must be a plain file name
  (`api.file_name_problem`) before any pattern runs on it, and the CHECKSUM URL derived from it
  must stay in the image's directory (`api.url_in_directory`); otherwise the arch is an
  `ArchError`.
- Every parameter may be overridden per arch by the catalog; items are filtered for each arch with
  that arch's parameters, and one `releases.json` URL is fetched once per pass by the core.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from containerdisks.api import (
    ArchError,
    Artifact,
    ChecksumFormat,
    ChecksumParseError,
    DiscoveryRequest,
    Evidence,
    Release,
    Source,
    SourceError,
    SourceParams,
    Upstream,
    check_placeholders,
    file_name_problem,
    parse_checksum_file,
    render,
    url_in_directory,
)

__all__ = ["FedoraParams", "FedoraSource", "checksum_file_name", "normalize_version"]

_DIGITS = re.compile(r"[0-9]+")
_UNIQUE_TAG = re.compile(r"[0-9]+-[0-9]+\.[0-9]+")
#: `40-1.14`, `41_Beta-1.2`: the release id in an image file name (not the `64` of `x86_64`).
_RELEASE_ID = re.compile(
    r"(?<![0-9A-Za-z])[0-9]+(?:_[A-Za-z][A-Za-z0-9]*)?-[0-9]+\.[0-9]+(?![0-9])"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SIZE = re.compile(r"[0-9]{1,20}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: The longest value of each releases.json field we accept (Fedora's are far shorter).
_LONGEST = {"link": 2048}
_LONGEST_DEFAULT = 128


class FedoraParams(SourceParams):
    """Catalog parameters of the `fedora` source."""

    url: str = Field(
        default="https://getfedora.org/releases.json",
        description="Fedora's releases.json (canonical URL).",
    )
    min_version: int = Field(
        default=38, description="Oldest Fedora version (first field) to publish."
    )
    variant: str = Field(default="Cloud", description="releases.json `variant` to select.")
    subvariant: str = Field(
        default="Cloud_Base", description="releases.json `subvariant` to select."
    )
    exclude: tuple[str, ...] = Field(
        default=(),
        description='"<version>/<arch>" pairs never published, e.g. "40/s390x" (cannot boot).',
    )

    keys: str | None = Field(
        default="fedora-{major}",
        description="Template of the pinned keyring that signs a release's CHECKSUM "
        "(`{major}`: the release's major version); null: treat Fedora as unsigned.",
    )

    def signing_keys(self) -> str | None:
        return self.keys

    @field_validator("keys")
    @classmethod
    def _keys_template(cls, value: str | None) -> str | None:
        if value is not None:
            check_placeholders("keys", value, ("major",))
        return value

    @field_validator("exclude")
    @classmethod
    def _pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pair in value:
            version, sep, arch = pair.partition("/")
            if not sep or not version or not arch or "/" in arch:
                raise ValueError(f"exclude entry {pair!r} is not <version>/<arch>")
        return value


class _Item(BaseModel):
    """One item of releases.json; other fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    version: str
    arch: str
    link: str
    variant: str
    subvariant: str
    sha256: str | None = None
    size: Any = None

    @property
    def declared_size(self) -> int | None:
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            return self.size if 0 <= self.size < 10**20 else None
        if isinstance(self.size, str) and _SIZE.fullmatch(self.size.strip()):
            return int(self.size)
        return None

    @field_validator("version", "arch", "link", "variant", "subvariant", "sha256")
    @classmethod
    def _plain(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        longest = _LONGEST.get(str(info.field_name), _LONGEST_DEFAULT)
        if len(value) > longest:
            raise ValueError(f"longer than {longest} characters")
        if _CONTROL.search(value):
            raise ValueError("contains a control character")
        return value


_ITEMS: TypeAdapter[list[_Item]] = TypeAdapter(list[_Item])


@dataclass(frozen=True)
class _Version:
    raw: str
    name: str  # normalised: the tag
    major: int
    stable: bool


def normalize_version(raw: str) -> str:
    """`41 Beta` -> `41-beta`: lowercase, whitespace runs to `-`."""
    return "-".join(raw.lower().split())


def checksum_file_name(image: str, variant: str, arch: str) -> str | None:
    """The CHECKSUM file published beside `image`; None when the name has no release id."""
    m = _RELEASE_ID.search(image)
    if m is None:
        return None
    return f"Fedora-{variant}-{m.group(0)}-{arch}-CHECKSUM"


def _parse_version(raw: str) -> _Version | None:
    fields = raw.split()
    if not fields or not _DIGITS.fullmatch(fields[0]):
        return None
    stable = len(fields) == 1
    return _Version(raw=raw, name=normalize_version(raw), major=int(fields[0]), stable=stable)


def _items(url: str, data: Any) -> list[_Item]:
    if not isinstance(data, list):
        raise SourceError(f"{url}: malformed releases.json: expected an array, got {_kind(data)}")
    try:
        return _ITEMS.validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = err["loc"]
        where = f"item {loc[0]}" if loc else "the array"
        field = f" field {loc[1]!r}" if len(loc) > 1 else ""
        msg = "expected an object" if err["type"] == "model_type" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        raise SourceError(f"{url}: malformed releases.json: {where}{field}: {msg}") from None


def _kind(data: Any) -> str:
    return {dict: "an object", str: "a string", type(None): "null"}.get(
        type(data), type(data).__name__
    )


def _file_name(link: str) -> str:
    return link.rsplit("/", 1)[-1]


class FedoraSource(Source):
    """Discovers Fedora versions and their Cloud Base images from releases.json."""

    kind: ClassVar[str] = "fedora"
    Params: ClassVar[type[SourceParams]] = FedoraParams
    discovers_versions: ClassVar[bool] = True

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        params = {arch: request.params_for(arch, FedoraParams) for arch in request.arches}
        urls = sorted({p.url for p in params.values()})
        documents = await asyncio.gather(*(upstream.get_json(u) for u in urls))
        items = {u: _items(u, doc) for u, doc in zip(urls, documents, strict=True)}

        versions: dict[str, _Version] = {}
        chosen: dict[str, dict[str, _Item]] = {}
        for arch in request.arches:
            p = params[arch]
            for item in _select(items[p.url], arch, p):
                version = _parse_version(item.version)
                assert version is not None  # _select keeps parseable versions only
                versions.setdefault(version.name, version)
                chosen.setdefault(version.name, {}).setdefault(arch, item)

        order = _ordered(versions.values())
        newest = next((v.name for v in order if v.stable), None)
        releases = await asyncio.gather(
            *(
                self._release(
                    v,
                    chosen[v.name],
                    request.arches,
                    v.name == newest,
                    upstream,
                    keyrings=_keyrings(request, params, v),
                )
                for v in order
            )
        )
        return list(releases)

    def describe(self, request: DiscoveryRequest) -> dict[str, Any]:
        return {
            **super().describe(request),
            "unique_tag": "<version>-<compose>",
            "rules": [
                "unique tag from the image file name (40-1.14), stable releases only",
                "one entry per releases.json version >= min_version, newest first; "
                "pre-releases (44 Beta -> 44-beta) after stable ones",
                "variant and subvariant must match; the link must end in qcow2",
                "latest and docs go to the newest stable version only",
                "sha256 from the clearsigned CHECKSUM file beside the image, signed by the "
                "release's key (signature: required); with signature: none from "
                "releases.json, else from that CHECKSUM unverified",
            ],
        }

    async def _release(
        self,
        version: _Version,
        items: dict[str, _Item],
        arches: Sequence[str],
        newest: bool,
        upstream: Upstream,
        *,
        keyrings: dict[str, str],
    ) -> Release:
        present = [arch for arch in arches if arch in items]
        artifacts: Sequence[Artifact | ArchError]
        if _TAG.fullmatch(version.name):
            artifacts = await asyncio.gather(
                *(
                    self._artifact(items[arch], arch, version, upstream, keyrings.get(arch))
                    for arch in present
                )
            )
        else:
            artifacts = [
                ArchError(
                    arch, f"{items[arch].link}: version {version.raw!r} does not make a valid tag"
                )
                for arch in present
            ]
        return Release(version=version.name, artifacts=tuple(artifacts), newest_stable=newest)

    async def _artifact(
        self,
        item: _Item,
        arch: str,
        version: _Version,
        upstream: Upstream,
        keyring: str | None,
    ) -> Artifact | ArchError:
        image = _file_name(item.link)
        problem = file_name_problem(image)
        if problem is not None:
            return ArchError(arch, f"{item.link}: image file name {problem}")
        tags: tuple[str, ...] = ()
        if version.stable:
            m = _UNIQUE_TAG.search(image)
            if m:
                tags = (m.group(0),)
        checksum = (item.sha256 or "").strip()
        evidence = Evidence("tls-only")
        if checksum and not _SHA256.fullmatch(checksum.lower()):
            return ArchError(
                arch,
                f"{item.link}: releases.json lists sha256 {checksum!r}, not 64 hex digits",
            )
        if keyring is not None or not checksum:
            found = await _from_checksum_file(item, arch, upstream, keyring)
            if isinstance(found, ArchError):
                return found
            signed, evidence = found
            if checksum and checksum.lower() != signed:
                return ArchError(
                    arch,
                    f"{item.link}: releases.json lists sha256 {checksum.lower()}, the signed "
                    f"{evidence.signed_url} lists {signed}",
                )
            checksum = signed
        try:
            return Artifact(
                arch=arch,
                url=item.link,
                checksum=checksum.lower(),
                unique_tags=tags,
                size=item.declared_size,
                evidence=evidence,
            )
        except SourceError as e:
            return ArchError(arch, str(e))


def _keyrings(
    request: DiscoveryRequest, params: dict[str, FedoraParams], version: _Version
) -> dict[str, str]:
    """Per arch, the keyring `version`'s CHECKSUM must be signed with (none: not required)."""
    if request.signature != "required":
        return {}
    return {
        arch: render(p.keys, {"major": str(version.major)})
        for arch, p in params.items()
        if p.keys is not None
    }


async def _from_checksum_file(
    item: _Item, arch: str, upstream: Upstream, keyring: str | None
) -> tuple[str, Evidence] | ArchError:
    """The sha256 of `item` from the CHECKSUM file beside it, verified against `keyring` when
    one is given, with its evidence; an ArchError saying why not."""
    image = _file_name(item.link)
    if keyring is not None:
        why = f"no signed sha256 for {arch} image {item.link}:"
    else:
        why = f"no verifiable sha256 for {arch} image {item.link}: releases.json has none and"
    name = checksum_file_name(image, item.variant, arch)
    if name is None:
        return ArchError(arch, f"{why} no CHECKSUM file name can be derived from {image!r}")
    url = item.link[: item.link.rfind("/") + 1] + name
    evidence = Evidence("tls-only")
    try:
        url_in_directory(item.link[: item.link.rfind("/") + 1], url)
        if keyring is None:
            sums = await upstream.get_checksums(url, ChecksumFormat.BSD)
        else:
            signed = await upstream.fetch_signed(url, keyring=keyring)
            evidence = signed.evidence
            sums = parse_checksum_file(signed.text, ChecksumFormat.BSD, unique=True)
    except ChecksumParseError as e:
        return ArchError(arch, f"{why} {url}: malformed signed checksum file: {e}")
    except SourceError as e:
        return ArchError(arch, f"{why} {e}")
    checksum = sums.get(image)
    if checksum is None:
        return ArchError(arch, f"{why} {url} does not list {image}")
    if not _SHA256.fullmatch(checksum):
        return ArchError(arch, f"{why} {url} lists {checksum!r} for it, not a sha256")
    return checksum, evidence


def _select(items: Sequence[_Item], arch: str, p: FedoraParams) -> Iterable[_Item]:
    excluded = set(p.exclude)
    for item in items:
        if item.arch != arch or item.variant != p.variant or item.subvariant != p.subvariant:
            continue
        if not item.link.endswith("qcow2"):
            continue
        version = _parse_version(item.version)
        if version is None or version.major < p.min_version:
            continue
        if f"{version.name}/{arch}" in excluded or f"{item.version}/{arch}" in excluded:
            continue
        yield item


def _ordered(versions: Iterable[_Version]) -> list[_Version]:
    """Stable versions newest first, then pre-releases newest first (numeric, not string)."""
    vs = list(versions)
    stable = sorted((v for v in vs if v.stable), key=lambda v: v.major, reverse=True)
    pre = sorted((v for v in vs if not v.stable), key=lambda v: (v.major, v.name), reverse=True)
    return stable + pre
