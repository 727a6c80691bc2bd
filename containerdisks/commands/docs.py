"""`docs publish`: write every focused repository's description to Quay, and make it public.

One job: pick the repositories that have docs entries, render each page (`docs.page`), and in a
dry run print it; otherwise send it with the two Quay API calls (`docs.quay`).

Decisions that shaped it:
- A page is a repository's, built from all its docs entries; `--focus` selects repositories
  (`--focus almalinux:9` publishes the almalinux page, which also lists `:10`), so a focused run
  never publishes a page that lost a version. A focus that selects no docs entry is a usage
  error (exit 2), as in medius.
- No registry is read. Fixed entries come straight from the catalog; a source that discovers
  its versions (Fedora) is asked upstream through the engine's own `HttpUpstream` (the same
  mirrors, timeouts and retries as `images push`) to know its newest stable version. A failed
  discovery fails that repository only.
- Everything that can be checked before the first request is: the registry form, docs content
  for every selected repository, and (when publishing) the token file — read once, stripped, and
  never shown. Those are configuration errors (exit 2) and nothing is sent.
- A Quay failure fails its repository with one line (the description is not made public when
  its PUT failed); the others go on; the exit status is 1 when any repository failed.
- Dry run (the default) prints each page on stdout, preceded by an HTML comment naming the
  repository (invisible when the Markdown is rendered), and sends nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from containerdisks.catalog import BoundItem, Catalog, Focus, ItemFailure
from containerdisks.commands.context import Context, exit_status
from containerdisks.docs.page import PageVersion, render_page
from containerdisks.docs.quay import QuayClient, QuayError
from containerdisks.retry import RetryPolicy
from containerdisks.settings import ConfigError, Settings
from containerdisks.upstream import HttpUpstream, Mirrors

__all__ = ["quay_organization", "run"]

log = structlog.get_logger(__name__)

_ORG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_QUAY = "quay.io"
_DEFAULT_API = "https://quay.io"


def quay_organization(registry: str, api_url: str) -> tuple[str, str]:
    """`quay.io/<org>` -> (host, org). Another host needs its own `quay_api_url`."""
    parts = registry.split("/")
    if len(parts) != 2 or not parts[0] or not _ORG.match(parts[1]):
        raise ConfigError(f"invalid flag --registry {registry!r}: expected quay.io/<organization>")
    host, org = parts
    if host != _QUAY and api_url.rstrip("/") == _DEFAULT_API:
        raise ConfigError(
            f"invalid flag --registry {registry!r}: this command only works with quay.io "
            "(for another Quay, set quay_api_url to its API)"
        )
    return host, org


def _read_token(path: Path | None) -> str:
    if path is None:
        raise ConfigError("docs publish --dry-run=false needs --quay-token-file")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(f"quay token file {path}: {reason}") from None
    if not token:
        raise ConfigError(f"quay token file {path} is empty")
    return token


def _repositories(catalog: Catalog, focus: Focus) -> list[str]:
    """Repository names with docs entries among the focused items, in catalog order."""
    chosen = catalog.select(focus)
    names = [b.item.name for b in chosen]
    with_docs = {b.item.name for b in catalog.items if b.item.docs}
    out = [n for i, n in enumerate(names) if n in with_docs and n not in names[:i]]
    if not out:
        what = f"focus {focus.spec!r} matches" if focus.spec else "the catalog has"
        raise ConfigError(f"{what} no entry with docs")
    missing = [n for n in out if n not in catalog.repositories]
    if missing:
        raise ConfigError(
            f"catalog: repository {missing[0]!r} has docs entries but no "
            f"`repositories.{missing[0]}` (title, homepage, description)"
        )
    return out


@dataclass
class _Page:
    name: str
    markdown: str | None = None
    error: str | None = None


class _DiscoveryError(Exception):
    """A repository's docs version could not be discovered; fails that repository only."""


async def _versions(
    items: list[BoundItem], catalog: Catalog, upstream: HttpUpstream
) -> list[PageVersion]:
    """The docs versions of one repository; discovers only what the catalog cannot say."""
    versions: list[PageVersion] = []
    for bound in items:
        item = bound.item
        if item.version is not None:
            versions.append(PageVersion(item, item.version, item.arches, item.latest))
            continue
        found = await catalog.discover(bound, upstream, Focus(""))
        if isinstance(found, ItemFailure):
            raise _DiscoveryError(f"{found.key}: {found.message}")
        docs = [e for e in found if e.docs]
        if not docs:
            raise _DiscoveryError(f"{item.label}: upstream lists no stable version for the docs")
        versions += [PageVersion(item, e.version, e.arches, e.latest) for e in docs]
    return versions


async def _render(
    settings: Settings, catalog: Catalog, names: list[str], registry: str
) -> list[_Page]:
    pages = []
    async with HttpUpstream(
        Mirrors(settings.upstream_mirrors),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retry=RetryPolicy(attempts=settings.retries),
        metadata_deadline=settings.metadata_deadline,
    ) as upstream:
        for name in names:
            items = [b for b in catalog.items if b.item.name == name and b.item.docs]
            try:
                versions = await _versions(items, catalog, upstream)
            except _DiscoveryError as e:
                log.error("docs_failed", repository=f"{registry}/{name}", error=str(e))
                pages.append(_Page(name, error=str(e)))
                continue
            markdown = render_page(registry, name, catalog.repositories[name], versions)
            pages.append(_Page(name, markdown=markdown))
    return pages


async def _send(
    settings: Settings, token: str, org: str, registry: str, pages: list[_Page]
) -> None:
    async with QuayClient(
        settings.quay_api_url,
        token,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        attempts=settings.retries,
        ca_file=settings.ca_file,
    ) as quay:
        for page in pages:
            if page.markdown is None:
                continue
            repository = f"{registry}/{page.name}"
            try:
                await quay.set_description(org, page.name, page.markdown)
                await quay.make_public(org, page.name)
            except QuayError as e:
                page.error = str(e)
                log.error("docs_failed", repository=repository, error=str(e))
            else:
                log.info("docs_published", repository=repository)


async def run(ctx: Context) -> int:
    settings, stream = ctx.settings, ctx.out
    registry = settings.docs_registry
    _, org = quay_organization(registry, settings.quay_api_url)
    catalog = ctx.catalog
    names = _repositories(catalog, ctx.focus)
    token = None if settings.dry_run else _read_token(settings.quay_token_file)
    pages = await _render(settings, catalog, names, registry)
    if token is None:
        for page in pages:
            if page.markdown is not None:
                stream.write(f"<!-- {registry}/{page.name} -->\n{page.markdown}\n")
    else:
        await _send(settings, token, org, registry, pages)
        for page in pages:
            result = f"failed: {page.error}" if page.error else "published"
            stream.write(f"{registry}/{page.name}  {result}\n")
    failed = [p.name for p in pages if p.error]
    if failed:
        log.warning("docs_repositories_failed", count=len(failed), repositories=failed)
    return exit_status(bool(failed))  # no --no-fail here: a failed repository is exit 1
