"""`catalog`: what the catalog would publish, and how, without touching the network.

One job: list the focused catalog items — entry, arches, source kind and parameters (per-arch
overrides shown as differences), image env, default user and tag policy — as a readable listing
or as JSON.

Decisions that shaped it:
- Everything comes from the loaded catalog and each source's `describe()`; no source is asked to
  discover, so the command is instant, works offline, and says nothing about what upstream
  currently offers (that is `images push`'s dry run). A source that discovers its versions
  (Fedora) is listed once, as `name:*`, with the rules it reports.
- A source may report its unique-tag rule as `unique_tag` in `describe()` (None: no unique tag);
  it is shown in the tag order push writes (containerdisks/tags.py).
- Without `--focus` every item is listed, the test-only ones marked as such; `--focus` selects
  as `images push` does, and a focus matching nothing is a usage error (exit 2).
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from containerdisks.api import render
from containerdisks.catalog import BoundItem
from containerdisks.commands.context import EXIT_OK, Context
from containerdisks.commands.render import table_lines, write_json
from containerdisks.tags import STAMP_PLACEHOLDER, tag_order

__all__ = ["describe_item", "run"]

_HEADER = ("ENTRY", "ARCHES", "SOURCE", "USER", "NOTES")


def describe_item(bound: BoundItem) -> dict[str, Any]:
    """One catalog item as `containerdisks catalog --output json` prints it."""
    item, source, request = bound.item, bound.source, bound.request
    discovering = item.version is None
    described = source.describe(request)
    first = request.params[item.arches[0]].model_dump(mode="json")
    per_arch: dict[str, dict[str, Any]] = {}
    for arch in item.arches[1:]:
        params = request.params[arch].model_dump(mode="json")
        diff = {k: v for k, v in params.items() if first.get(k) != v}
        if diff:
            per_arch[arch] = diff
    version = item.version if item.version is not None else "<version>"
    unique: str | None
    if "unique_tag" in described:
        rule = described["unique_tag"]
        unique = None if rule is None else render(str(rule), {"version": version})
    else:
        unique = "<as the source reports>"
    tags = tag_order(
        version,
        unique=[unique] if unique else [],
        latest=item.latest,
        stamp=f"{version}-{STAMP_PLACEHOLDER}",
    )
    return {
        "entry": item.label,
        "name": item.name,
        "version": item.version,
        "versions": "discovered upstream" if discovering else "fixed",
        "arches": list(item.arches),
        "source": described,
        "signature": request.signature,
        "per_arch": per_arch,
        "env": {arch: list(item.env(arch)) for arch in item.arches},
        "user": item.user,
        "secure_boot": {arch: item.secure_boot_for(arch) for arch in item.arches},
        "guest_agent": item.guest_agent,
        "tags": tags,
        "unique_tag": unique,
        "latest": item.latest,
        "docs": item.docs,
        "latest_and_docs_for": "the newest stable version" if discovering else "this entry",
        "skip_unless_focused": item.skip_unless_focused,
    }


def _notes(d: dict[str, Any]) -> str:
    marks = [m for m in ("latest", "docs") if d[m]]
    notes = []
    if marks and d["versions"] != "fixed":
        notes.append("+".join(marks) + " on newest stable")
    elif marks:
        notes.append("+".join(marks))
    if d["versions"] != "fixed":
        notes.append("versions discovered upstream")
    if d["skip_unless_focused"]:
        notes.append("test-only: published only when focused")
    return "; ".join(notes) or "-"


def _lines(key: str, v: Any) -> list[tuple[str, str]]:
    """A parameter as listing lines: a list of strings one per line, anything else as JSON."""
    if isinstance(v, str):
        return [(key, v)]
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return [(key, v[0])] + [("", x) for x in v[1:]]
    return [(key, json.dumps(v))]


def _env_lines(env: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Env shared by every arch once, then what differs per arch."""
    common = [e for e in next(iter(env.values()), []) if all(e in es for es in env.values())]
    out = [("env", e) for e in common]
    out += [(f"env {a}", e) for a, es in env.items() for e in es if e not in common]
    return out or [("env", "-")]


def render_listing(described: list[dict[str, Any]], out: TextIO) -> None:
    """The table, each row followed by its details, indented."""
    rows = [_HEADER] + [
        (
            d["entry"],
            ",".join(d["arches"]),
            d["source"].get("kind", "?"),
            d["user"] or "-",
            _notes(d),
        )
        for d in described
    ]
    header, *lines = table_lines(rows)
    out.write(header + "\n")
    for d, line in zip(described, lines, strict=True):
        out.write(line + "\n")
        details = [
            ("tags", ", ".join(d["tags"])),
            ("signature", d["signature"]),
            *_env_lines(d["env"]),
        ]
        for key, value in d["source"].items():
            if key != "kind" and value is not None:
                details += _lines(key, value)
        for arch, diff in d["per_arch"].items():
            for key, value in diff.items():
                details += _lines(f"{arch} {key}", value)
        width = max(len(k) for k, _ in details)
        for key, value in details:
            out.write(f"    {key.ljust(width)}  {value}\n")


async def run(ctx: Context) -> int:
    catalog, focus = ctx.catalog, ctx.focus
    items = catalog.select(focus) if focus.given else list(catalog.items)
    described = [describe_item(b) for b in items]
    if ctx.output == "json":
        write_json({"entries": described}, ctx.out)
    else:
        render_listing(described, ctx.out)
    return EXIT_OK
