"""Shared fixture of the fault tests: a Fedora upstream with real qcow2 files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.disks import fedora_tree
from tests.support.upstream_server import UpstreamServer


@pytest.fixture
def fedora(tmp_path: Path) -> Iterator[tuple[UpstreamServer, dict[tuple[str, str], bytes]]]:
    root = tmp_path / "up"
    disks = fedora_tree(root)
    with UpstreamServer(root) as srv:
        yield srv, disks
