"""The repository descriptions on Quay, for `docs publish` (commands/docs.py).

Split in two so each part is testable alone: `page` renders Markdown from catalog data and
does no I/O, `quay` is the Quay API client and knows nothing of the catalog; the command
joins them (focus, discovery, dry run, exit status).
"""
