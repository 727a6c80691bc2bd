"""Parsing JSON that comes from outside (a registry, a token service, an auth file, a helper).

One job: `loads`, which is `json.loads` except that a document nested deeper than the parser's
recursion limit is a `ValueError` like any other malformed document.

Decision: convert, don't pre-scan. The C parser meets the recursion limit cleanly and quickly;
every caller already turns a `ValueError` into its own one-line error, where a `RecursionError`
escaped all of them and ended the command in a traceback (a hostile token service, or an auth
file of 100,000 brackets).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(data: str | bytes) -> Any:
    """`json.loads(data)`; nesting too deep to parse raises `ValueError`, not `RecursionError`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
