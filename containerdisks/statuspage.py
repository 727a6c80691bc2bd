"""The status page at `/`: the dict `/status` serializes, as one self-contained HTML page.

One job: turn `Status.as_json()` (already redacted by the server) into HTML a person reads in a
browser, without JavaScript, without any external asset (it works air-gapped), refreshing itself
every `REFRESH` seconds. No I/O, no state: the server hands it the dict and gets a string.

Decisions:
- One source: the page is rendered from the very dict `/status` returns, so the two can never
  disagree; it shows nothing `/status` does not.
- Every value is hostile (entry names, versions, checksums and errors come from upstream and
  registries). Markup is built only with `_h`, which escapes every argument that is not already
  markup (`_Safe`); nothing else concatenates strings into HTML. The server adds a CSP that
  forbids scripts and every external load, so even a missed escape could not run anything.
- Failures first: entries with a failed result or a failed arch lead, then the rest by name.
- The small per-entry history is the last syncs `/status` keeps, oldest first, each a coloured
  mark whose text is the result (no colour-only meaning).
- The leader/shards a replica holds are shown when the status has them (`election`, written
  by `--leader-elect` / `--shards`), field by field.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REFRESH", "render_page"]

#: Seconds between the page's own reloads (a meta refresh, no script).
REFRESH = 30
#: Characters of a checksum or digest shown; the full value is in the cell's title.
_SHORT = 19

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}code{font-size:.9em}
.o{display:inline-block;padding:0 .4em;border-radius:3px;background:#eee}
.o-failed{background:#f8d0d0;color:#800}.o-published,.o-reused{background:#d0f0d0;color:#060}
.o-up-to-date{background:#e4ecf8;color:#124}.o-pending,.o-build,.o-retag,.o-reuse{background:#fff0c0}
tr.failed td{background:#fff6f6}.reason{max-width:40em;word-break:break-word}
ol.hist{list-style:none;margin:0;padding:0;display:flex;gap:2px;flex-wrap:wrap}
ol.hist li{font-size:.75em}.muted{color:#777}dl{display:grid;grid-template-columns:max-content auto;
gap:.1em 1em;margin:0}dt{font-weight:600}dd{margin:0}
"""


class _Safe(str):
    """Markup built by `_h`: inserted as is."""


def _h(template: str, *args: object) -> _Safe:
    """`template` (ours, `{}` placeholders) with every argument escaped unless it is markup."""
    return _Safe(template.format(*(a if isinstance(a, _Safe) else _text(a) for a in args)))


def _text(value: object) -> str:
    return "" if value is None else html.escape(str(value), quote=True)


def _join(parts: Iterable[_Safe]) -> _Safe:
    return _Safe("".join(parts))


def _short(value: str | None) -> _Safe:
    if not value:
        return _h('<span class="muted">-</span>')
    shown = value if len(value) <= _SHORT else value[:_SHORT] + "…"
    return _h('<code title="{}">{}</code>', value, shown)


def _when(value: str | None) -> _Safe:
    return _h("{}", value) if value else _h('<span class="muted">-</span>')


def _mark(outcome: str | None, title: str = "") -> _Safe:
    word = outcome or "unknown"
    return _h('<span class="o o-{}" title="{}">{}</span>', word, title, word)


def _failing(entry: Mapping[str, Any]) -> bool:
    arches = entry.get("arches") or {}
    return entry.get("result") == "failed" or any(
        a.get("outcome") == "failed" for a in arches.values()
    )


def _pass_section(data: Mapping[str, Any]) -> _Safe:
    current = data.get("current_pass")
    last = data.get("last_pass")
    interval = data.get("interval")
    rows = [
        _h("<dt>running</dt><dd>{}</dd>", _h("since {}", current["started"]) if current else "no"),
        _h(
            "<dt>last finished</dt><dd>{}</dd>",
            _h(
                "{} ({} s, {} entries, {} failed)",
                last["finished"],
                last["seconds"],
                last["entries"],
                last["failed"],
            )
            if last
            else "none yet",
        ),
        _h("<dt>next</dt><dd>{}</dd>", _when(data.get("next_pass"))),
        _h("<dt>interval</dt><dd>{}</dd>", f"{interval:g} s" if interval else "one pass"),
        _h("<dt>passes completed</dt><dd>{}</dd>", data.get("passes", 0)),
    ]
    recent = data.get("recent_passes") or []
    table = _Safe("")
    if recent:
        table = _h(
            "<table><thead><tr><th>started</th><th>finished</th><th>seconds</th>"
            "<th>entries</th><th>failed</th></tr></thead><tbody>{}</tbody></table>",
            _join(
                _h(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    p.get("started"),
                    p.get("finished"),
                    p.get("seconds"),
                    p.get("entries"),
                    p.get("failed"),
                )
                for p in recent
            ),
        )
    return _h('<h2>Pass</h2><dl id="pass">{}</dl><h2>Recent passes</h2>{}', _join(rows), table)


def _replica_section(data: Mapping[str, Any]) -> _Safe:
    """The Leases this replica holds (`election`: leader, shards held, ...), when it has any;
    shown field by field, so that a field the election adds later appears without a change."""
    election = data.get("election")
    if not isinstance(election, Mapping):
        return _Safe("")
    fields = _join(
        _h(
            "<dt>{}</dt><dd>{}</dd>",
            name.replace("_", " "),
            ", ".join(map(str, value)) if isinstance(value, list) else value,
        )
        for name, value in election.items()
    )
    return _h('<h2>Replica</h2><dl id="replica">{}</dl>', fields)


def _history(entry: Mapping[str, Any]) -> _Safe:
    items = entry.get("history") or []
    return _h(
        '<ol class="hist">{}</ol>',
        _join(
            _h(
                "<li>{}</li>",
                _mark(h.get("result"), f"{h.get('at')}: {h.get('error') or h.get('result')}"),
            )
            for h in items
        ),
    )


def _entry_rows(key: str, entry: Mapping[str, Any]) -> Iterable[_Safe]:
    name, _, version = key.partition(":")
    arches: Mapping[str, Mapping[str, Any]] = entry.get("arches") or {}
    rows: list[tuple[str, Mapping[str, Any]]] = list(arches.items())
    if not rows:  # failed before it had arches (a discovery failure), or not synced yet
        rows = [("*", {"outcome": entry.get("result"), "reason": entry.get("error")})]
    failing = _failing(entry)
    tags = entry.get("tags") or []
    for i, (arch, a) in enumerate(rows):
        outcome = a.get("outcome") or entry.get("result")
        reason = a.get("reason")
        if outcome == "failed" and a.get("action") != "failed":  # failed beyond the plan
            reason = entry.get("error") or reason
        per_entry = _Safe("")
        if i == 0:
            span = len(rows)
            per_entry = _h(
                '<td rowspan="{}">{}</td><td rowspan="{}">{}</td>',
                span,
                _h("<strong>{}</strong><br>{}", name, _mark(entry.get("result"))),
                span,
                _h(
                    '{}<br><span class="muted">{} · failures {}</span>',
                    version,
                    entry.get("state"),
                    entry.get("failures", 0),
                ),
            )
        tail = _Safe("")
        if i == 0:
            tail = _h(
                '<td rowspan="{}">{}</td><td rowspan="{}">{}</td>',
                len(rows),
                _history(entry),
                len(rows),
                _when(entry.get("next_poll")),
            )
        yield _h(
            '<tr class="{}" data-entry="{}" data-arch="{}" data-outcome="{}">{}'
            '<td>{}</td><td>{}</td><td class="reason">{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td><td>{}</td>{}</tr>",
            "failed" if failing else "",
            key,
            arch,
            outcome or "",
            per_entry,
            arch,
            _mark(outcome),
            reason,
            _short(a.get("upstream")),
            _short(a.get("digest") or entry.get("digest")),
            ", ".join(tags) if tags else _h('<span class="muted">-</span>'),
            _when(a.get("changed") or entry.get("changed")),
            tail,
        )


def _entries_section(entries: Mapping[str, Mapping[str, Any]]) -> _Safe:
    order = sorted(entries, key=lambda k: (not _failing(entries[k]), k))
    failed = sum(1 for k in order if _failing(entries[k]))
    return _h(
        "<h2>Entries: {}, {} failing</h2>"
        '<table id="entries"><thead><tr><th>entry</th><th>version</th><th>arch</th>'
        "<th>outcome</th><th>reason</th><th>upstream checksum</th><th>published digest</th>"
        "<th>tags</th><th>changed</th><th>last syncs</th><th>next poll</th></tr></thead>"
        "<tbody>{}</tbody></table>",
        len(order),
        failed,
        _join(row for key in order for row in _entry_rows(key, entries[key])),
    )


def render_page(data: Mapping[str, Any], *, version: str, now: str) -> str:
    """The page for `data` (what `/status` serializes), rendered at `now`."""
    ready = "ready" if data.get("ready") else "not ready"
    state = "stopping" if data.get("stopping") else ready
    mode = " · dry run: nothing is published" if data.get("dry_run") else ""
    body = _h(
        '<h1>containerdisks</h1><p id="summary">{} · version {} · up since {}{} · '
        '<span class="muted">as of {}, refreshed every {} s; JSON at <a href="status">/status'
        "</a></span></p>{}{}{}",
        state,
        version,
        data.get("started"),
        mode,
        now,
        REFRESH,
        _pass_section(data),
        _replica_section(data),
        _entries_section(data.get("entries") or {}),
    )
    page = _h(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="{}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>containerdisks: {}</title><style>{}</style></head><body>{}</body></html>\n",
        REFRESH,
        state,
        _Safe(_STYLE),
        body,
    )
    return str(page)
