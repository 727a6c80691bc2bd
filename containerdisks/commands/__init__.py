"""The commands: one module per command, each a typed `run(ctx) -> int` over one `Context`.

`push`, `serve`, `verify`, `promote`, `prune`, `catalog` and `docs` are what the command line
runs (`cli.py` calls them directly, importing only the one a run needs, so start-up stays short);
`context.py` holds what every command shares (settings, the catalog loaded once, the output, the
runner of entries with workers, the exit statuses) and `render.py` the one table/JSON renderer.
This package imports nothing at import time: `containerdisks --help` loads none of it.
"""
