"""Fixtures for source tests: a real loopback upstream and the real `HttpUpstream` before it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.sources import Serve, serving


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    """`async with serve(fixtures) as (server, upstream):` a tree of those fixture files."""
    return serving(tmp_path / "upstream")
