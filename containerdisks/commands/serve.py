"""`serve`: the daemon (daemon.py wires it), or with `--once` the single pass of `images push`.

One job: choose between the two. `serve --once` is one pass like `images push` — no HTTP
server, the plan on stdout, the results file where `--results-file` says, the exit statuses of
`images push` — except that it owns its work dir and removes what a killed predecessor left.
The daemon exits 0 after the drain a first SIGTERM/SIGINT starts.
"""

from __future__ import annotations

from containerdisks import daemon
from containerdisks.commands import push
from containerdisks.commands.context import Context

__all__ = ["run"]


async def run(ctx: Context) -> int:
    if ctx.settings.once:
        return await push.once(ctx, owns_work_dir=True)
    return await daemon.serve(ctx.settings, lambda: push.focused_catalog(ctx))
