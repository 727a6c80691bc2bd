"""`docs publish`: the repository descriptions on Quay.

Split in three so each part is testable alone: `page` renders Markdown from catalog data and
does no I/O, `quay` is the Quay API client and knows nothing of the catalog, `publish` is the
command that joins them (focus, discovery, dry run, exit status).
"""
