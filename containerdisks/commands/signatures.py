"""`images verify-signatures`: check a published registry alone, as a user would.

One job: for every repository the (focused) catalog names under `--registry` (default
`promote_registry`, where users pull from), read every tag, and check each digest once: its
signature and provenance (and those of every manifest it lists), both ways they are stored,
with `--verify-key` (registry/attach.py `check_image`). No results file, no upstream.

Decisions:
- Signature and referrer tags (`sha256-<hex>`, `.sig`, `.att`) are not images: skipped.
- A repository that does not exist is a row `no such repository`, not a failure: the catalog
  may name entries not published there. Any unsigned or badly signed digest is one line and
  exit 1 (0 with `--no-fail`); no key is a usage error (exit 2).
"""

from __future__ import annotations

import re

import structlog

from containerdisks import oci
from containerdisks.commands.context import Context, load_public_key
from containerdisks.commands.render import write_json, write_table
from containerdisks.registry.attach import check_image
from containerdisks.registry.stores import Connection, Place, open_places
from containerdisks.retry import RetryPolicy
from containerdisks.settings import ConfigError
from containerdisks.signing import PublicKey, SigningError

__all__ = ["run"]

log = structlog.get_logger(__name__)

_NOT_AN_IMAGE = re.compile(r"sha256-[0-9a-f]{64}(\.sig|\.att)?")


async def _repository(place: Place, name: str, key: PublicKey) -> list[dict[str, object]]:
    repo = place.repo(name)
    where = place.where(name)
    try:
        tags = [t for t in await place.store.list_tags(repo) if not _NOT_AN_IMAGE.fullmatch(t)]
    except oci.NotFoundError:
        return [{"repository": where, "digest": "", "tags": [], "error": "no such repository"}]
    by_digest: dict[str, list[str]] = {}
    for tag in tags:
        head = await place.store.head_manifest(repo, tag)
        if head is not None:
            by_digest.setdefault(head.digest, []).append(tag)
    rows: list[dict[str, object]] = []
    for digest, named in by_digest.items():
        row: dict[str, object] = {"repository": where, "digest": digest, "tags": named}
        try:
            checked = await check_image(
                place.store, repo, await place.store.get_manifest(repo, digest), key
            )
            row["identity"] = checked.identity
            row["error"] = ""
        except (SigningError, oci.OCIError) as e:
            row["error"] = str(e)
            log.error("signature_check_failed", repository=where, digest=digest, error=str(e))
        rows.append(row)
    return rows


async def run(ctx: Context) -> int:
    settings = ctx.settings
    key = load_public_key(settings.verify_key)
    if key is None:
        raise ConfigError("images verify-signatures: --verify-key FILE is required")
    names = list(dict.fromkeys(b.item.name for b in ctx.catalog.select(ctx.focus)))
    backoff = RetryPolicy.for_registry(settings.retries)
    spec = settings.promote_registry
    rows: list[dict[str, object]] = []
    async with open_places(spec, spec, Connection.of(settings), backoff) as (place, _):

        async def one(name: str) -> list[dict[str, object]]:
            return await _repository(place, name, key)

        for found in await ctx.each(names, one):
            rows += found
    failed = any(r["error"] and r["digest"] for r in rows)
    if ctx.output == "json":
        write_json(rows, ctx.out)
    else:
        table = [("REPOSITORY", "DIGEST", "TAGS", "RESULT")]
        for r in rows:
            tags = r["tags"]
            assert isinstance(tags, list)
            result = f"failed: {r['error']}" if r["error"] else f"signed ({r['identity']})"
            if not r["digest"]:
                result = str(r["error"])
            table.append((str(r["repository"]), str(r["digest"]) or "-", ",".join(tags), result))
        write_table(table, ctx.out)
    return ctx.exit_status(failed)
