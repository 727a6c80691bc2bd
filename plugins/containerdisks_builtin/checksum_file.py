"""The declarative source: pick an image from the checksum file a distribution publishes.

One job: for each arch of a catalog entry, read one checksum file (BSD or GNU format), choose the
file name that matches a pattern, and return its checksum, download URL and unique tag.

Decisions that shaped it:
- Most distributions (CentOS Stream, AlmaLinux, Ubuntu, openSUSE) need no code, only parameters:
  a URL template, the file format, a regex the image name must *fully* match, and which match to
  take. Adding such a distribution is a catalog entry, not a plugin.
- Templates use `api.render` with `{name}`, `{version}`, `{arch}`, `{goarch}`; `match` is rendered
  with `regex=True`, so `{version}` "22.04" matches literally while `\\d{2}` stays a quantifier.
  The regex's named groups (`(?P<tag>...)`) are available to `unique_tag` and `download`, and
  `download` may also use `{file}`, the picked file name. An unknown placeholder, an invalid
  regex, or a group named like a built-in value is a configuration error, caught when the catalog
  is loaded.
- Matching names are sorted (code-point order, as Go's `sort.Strings` in medius) and `pick`
  takes the last (default) or the first: the same input always gives the same result (medius
  took the first hit in Go map order for Tumbleweed, which was random).
- The default download URL is the checksum file's directory plus the picked name, which holds
  for every distribution in the catalog; `download` overrides it.
- `compression: auto` (the default) decompresses `.gz` / `.xz` downloads, because a containerdisk
  must hold a qcow2 or raw disk, never a compressed one.
- Per-arch overrides are merged by the core, so each arch simply uses its own parameters. Arches
  sharing a checksum URL (Ubuntu's one SHA256SUMS) cost one request per pass: the core's
  `Upstream` shares the fetch.
- Upstream signatures: `keys` names the pinned keyring (a template: `almalinux-{version}`) and
  `signature_url` the detached signature over the checksum file (a template that may use
  `{url}`, the rendered checksum URL: `{url}.gpg`); without `signature_url` the checksum file
  itself is clearsigned. Under the catalog's `signature: required` the checksums are read only
  from the signed text (`Upstream.fetch_signed`), and the picked name is the name inside it, so
  the download is bound to the signed name; the artifact's evidence is the signature.
- Per-image signed files (openSUSE Tumbleweed and MicroOS): the directory listing (`url`) is not
  signed, but each image has `<image>.sha256` signed by `<image>.sha256.asc`. `signed_file`
  (`'{file}.sha256'`) names that file in the listing's directory: under `required` the name is
  picked from the listing, then that name's own signed file is fetched and verified
  (`signature_url`'s `{url}` is then the signed file's URL), and the checksum is read only from
  it, for exactly the picked name. A signed file that does not list the name, or whose checksum
  differs from the listing's, fails the arch: the listing chose the name, the signature vouches
  for the bytes, and the two must agree. An older snapshot a mirror lists is the rollback guard's
  (its signature is older than the one accepted).
- Every failure is per arch (`ArchError` naming the URL and, when nothing matched, the pattern):
  an unreachable or malformed checksum file, no match, an invalid unique tag or checksum.
- Names in the checksum file are upstream's data: the parser keeps only plain file names, `match`
  runs through `api.NameMatcher` (a time budget, off the event loop), and the download URL, the
  default one or the `download` template's, must stay in its directory (`api.url_in_directory`:
  the checksum file's directory, or the template's part before its first placeholder).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from containerdisks.api import (
    GOARCH,
    Algorithm,
    ArchError,
    Artifact,
    ChecksumFormat,
    ChecksumParseError,
    Compression,
    DiscoveryRequest,
    Evidence,
    NameMatcher,
    Release,
    Signed,
    Source,
    SourceError,
    SourceParams,
    Upstream,
    check_placeholders,
    parse_checksum_file,
    render,
    url_in_directory,
)

__all__ = ["ChecksumFileParams", "ChecksumFileSource"]

#: Only group names of lowercase letters and `_` are substituted by `api.render`.
_RENDERED = re.compile(r"[a-z_]+")
_CONTEXT = frozenset({"name", "version", "arch", "goarch"})
#: A valid image tag (the OCI distribution spec's rule).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class ChecksumFileParams(SourceParams):
    """Catalog parameters of the `checksum-file` source."""

    url: str = Field(description="Template of the checksum file's canonical URL.")
    format: ChecksumFormat = Field(description="`bsd` (`SHA256 (name) = hex`) or `gnu`.")
    match: str = Field(description="Regex template the image file name must fully match.")
    pick: Literal["last", "first"] = Field(
        default="last", description="Which matching name to take, in sorted order."
    )
    unique_tag: str | None = Field(
        default=None,
        description="Template of the additional unique tag; may use the match's groups.",
    )
    download: str | None = Field(
        default=None,
        description="Template of the image URL; default: the checksum file's directory + name.",
    )
    algorithm: Algorithm = Field(default="sha256", description="Hash the checksum file lists.")
    compression: Literal["gzip", "xz", "none", "auto"] = Field(
        default="auto", description="How the download is compressed; `auto`: from a .gz/.xz suffix."
    )
    keys: str | None = Field(
        default=None,
        description="Template of the pinned keyring that signs the checksum file "
        "(`ubuntu`, `almalinux-{version}`); unset: the distribution signs nothing.",
    )
    signature_url: str | None = Field(
        default=None,
        description="Template of the detached signature's URL; may use `{url}`, the checksum "
        "file's (`{url}.gpg`). Unset with `keys`: the checksum file is clearsigned.",
    )

    signed_file: str | None = Field(
        default=None,
        description="Template of a per-image checksum file in `url`'s directory, which may use "
        "`{file}`, the picked name (`'{file}.sha256'`): with `keys`, the picked image's checksum "
        "is read only from it, signed by `signature_url` (whose `{url}` is this file's URL); "
        "`url` is then only the listing names are picked from.",
    )

    def signing_keys(self) -> str | None:
        return self.keys

    @model_validator(mode="after")
    def _templates(self) -> ChecksumFileParams:
        _known_placeholders("url", self.url, _CONTEXT)
        _known_placeholders("match", self.match, _CONTEXT)
        dummy = dict.fromkeys(_CONTEXT, "x")
        try:
            pattern = NameMatcher(render(self.match, dummy, regex=True))
        except ValueError:
            raise ValueError(f"match {self.match!r} is not a valid regex") from None
        groups = {g for g in pattern.groupindex if _RENDERED.fullmatch(g)}
        clash = sorted(set(pattern.groupindex) & (_CONTEXT | {"file"}))
        if clash:
            raise ValueError(f"match group name {clash[0]!r} is reserved")
        if self.unique_tag is not None:
            _known_placeholders("unique_tag", self.unique_tag, _CONTEXT | groups)
        if self.download is not None:
            _known_placeholders("download", self.download, _CONTEXT | groups | {"file"})
        if self.keys is not None:
            _known_placeholders("keys", self.keys, _CONTEXT)
        if self.signature_url is not None:
            if self.keys is None:
                raise ValueError("signature_url needs keys (the keyring that signs)")
            _known_placeholders("signature_url", self.signature_url, _CONTEXT | {"url"})
        if self.signed_file is not None:
            if self.keys is None:
                raise ValueError("signed_file needs keys (the keyring that signs it)")
            _known_placeholders("signed_file", self.signed_file, _CONTEXT | {"file"})
        return self


def _known_placeholders(field: str, template: str, known: Iterable[str]) -> None:
    check_placeholders(
        field, template, known, "group names used as placeholders must be lowercase letters and _"
    )


class ChecksumFileSource(Source):
    """Discovers one version's images from the checksum files next to them."""

    kind: ClassVar[str] = "checksum-file"
    Params: ClassVar[type[SourceParams]] = ChecksumFileParams

    async def discover(self, request: DiscoveryRequest, upstream: Upstream) -> list[Release]:
        if request.version is None:
            raise SourceError(f"{request.name}: the checksum-file source needs a version")
        results = await asyncio.gather(
            *(self._arch(request, arch, upstream) for arch in request.arches)
        )
        return [Release(version=request.version, artifacts=tuple(results))]

    async def _arch(
        self, request: DiscoveryRequest, arch: str, upstream: Upstream
    ) -> Artifact | ArchError:
        p = request.params_for(arch, ChecksumFileParams)
        if arch not in GOARCH:
            return ArchError(arch, f"unknown arch {arch!r}")
        values = request.context(arch).values()
        url = render(p.url, values)
        evidence = Evidence("tls-only")
        sums: Mapping[str, str]
        per_image = request.signature == "required" and p.signed_file is not None
        try:
            if request.signature == "required" and p.keys is not None and not per_image:
                signed = await _fetch_signed(p, values, url, p.keys, upstream)
                evidence = signed.evidence
                sums = _parsed(url, signed.text, p.format)
            else:
                sums = await upstream.get_checksums(url, p.format)
        except SourceError as e:
            return ArchError(arch, str(e))
        pattern = NameMatcher(render(p.match, values, regex=True))
        try:
            matches = await pattern.fullmatches(sums)
        except SourceError as e:
            return ArchError(arch, f"{url}: {e}")
        names = sorted(matches)
        if not names:
            return ArchError(arch, f"{url}: no file name matches '{pattern.pattern}'")
        name = names[-1] if p.pick == "last" else names[0]
        tag_values = {**matches[name], **values}
        if p.download is None:
            directory = _directory_of(url)
            download = directory + name
        else:
            directory = _static_directory(render(p.download, values))
            download = render(p.download, {**tag_values, "file": name})
        try:
            url_in_directory(directory, download)
        except SourceError as e:
            return ArchError(arch, f"{url}: {e}")
        checksum = sums[name]
        if per_image:
            got = await _signed_checksum(
                p, values, upstream, listing=url, name=name, listed=checksum
            )
            if isinstance(got, str):
                return ArchError(arch, got)
            checksum, evidence = got
        tags: tuple[str, ...] = ()
        if p.unique_tag is not None:
            tag = render(p.unique_tag, tag_values)
            if not _TAG.fullmatch(tag):
                return ArchError(
                    arch, f"{url}: unique tag {tag!r} (from {name}) is not a valid tag"
                )
            tags = (tag,)
        try:
            return Artifact(
                arch=arch,
                url=download,
                checksum=checksum,
                algorithm=p.algorithm,
                compression=_compression(p.compression, download),
                unique_tags=tags,
                evidence=evidence,
            )
        except SourceError as e:
            return ArchError(arch, f"{url}: {e}")


def _directory_of(url: str) -> str:
    return url[: url.rfind("/") + 1]


async def _signed_checksum(
    p: ChecksumFileParams,
    values: Mapping[str, str],
    upstream: Upstream,
    *,
    listing: str,
    name: str,
    listed: str,
) -> tuple[str, Evidence] | str:
    """`name`'s checksum from its own signed file (`signed_file`, beside `listing`), with the
    evidence; else why not, in one line naming the signed file."""
    if p.signed_file is None or p.keys is None:  # the validator makes keys go with signed_file
        raise SourceError(f"{listing}: signed_file and keys are both needed")
    directory = _directory_of(listing)
    signed_url = directory + render(p.signed_file, {**values, "file": name})
    try:
        url_in_directory(directory, signed_url)
        signed = await _fetch_signed(p, values, signed_url, p.keys, upstream)
        sums = _parsed(signed_url, signed.text, p.format)
    except SourceError as e:
        return str(e)
    checksum = sums.get(name)
    if checksum is None:
        return f"{signed_url}: the signed file does not list {name} (it lists {_few(sums)})"
    if checksum != listed:
        return f"{signed_url}: signed checksum of {name} is {checksum}; {listing} lists {listed}"
    return checksum, signed.evidence


async def _fetch_signed(
    p: ChecksumFileParams, values: Mapping[str, str], url: str, keys: str, upstream: Upstream
) -> Signed:
    """`url` verified against the keyring `keys` names, by `signature_url` (its `{url}` is
    `url`) or clearsigned."""
    signature_url = (
        None if p.signature_url is None else render(p.signature_url, {**values, "url": url})
    )
    return await upstream.fetch_signed(
        url, signature_url=signature_url, keyring=render(keys, values)
    )


def _few(names: Iterable[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")


def _parsed(url: str, text: str, fmt: ChecksumFormat) -> dict[str, str]:
    try:
        return dict(parse_checksum_file(text, fmt, unique=True))
    except ChecksumParseError as e:
        raise SourceError(f"{url}: malformed signed checksum file: {e}") from None


def _static_directory(template: str) -> str:
    """The directory a rendered `download` template fixes: up to the last `/` before the
    first placeholder left (the match's groups and `{file}` come from upstream)."""
    first = template.find("{")
    fixed = template if first < 0 else template[:first]
    return fixed[: fixed.rfind("/") + 1]


def _compression(setting: str, url: str) -> Compression | None:
    if setting == "gzip":
        return "gzip"
    if setting == "xz":
        return "xz"
    if setting == "none":
        return None
    path = urlsplit(url).path
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith(".xz"):
        return "xz"
    return None
