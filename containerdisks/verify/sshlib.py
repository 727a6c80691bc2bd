"""asyncssh, imported once with its import-time noise silenced.

asyncssh still defines DSA key types, and cryptography >= 48 warns about DSA when those are
merely declared: without this, every `containerdisks` run would print five warnings on stderr.
"""

from __future__ import annotations

import logging
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh

logging.getLogger("asyncssh").setLevel(logging.WARNING)  # its INFO lines would be noise

__all__ = ["asyncssh"]
