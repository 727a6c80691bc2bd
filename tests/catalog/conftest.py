"""Fixtures for catalog tests: a loopback upstream with the real fixture files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.sources import Serve, serving


@pytest.fixture
def serve(tmp_path: Path) -> Serve:
    """`async with serve(fixtures) as (server, upstream):` a tree of those fixture files."""
    return serving(tmp_path / "upstream")
