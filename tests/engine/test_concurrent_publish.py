"""Two publishers of the same entry at once (a Lease moved while the old holder's publish was in
flight, docs/scaling.md) leave a consistent registry: real `images push` processes racing into
one real registry, read back with skopeo.

Every tag both wrote resolves to a complete image (every platform manifest and blob present,
copied byte-exact by skopeo), and the moving and unique tags carry exactly the bytes a single
publish of the same upstream writes into another repository: reproducible digests, manifests
before tags, tags in one order.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.cli import clean_env, command
from tests.support.disks import fedora_tree
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer


def _start(srv: UpstreamServer, target: str, cwd: Path) -> subprocess.Popen[str]:
    cwd.mkdir()
    return subprocess.Popen(
        command(srv, target, "--focus", "fedora:40", cwd=cwd),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=cwd,
    )  # fmt: skip


def test_two_publishers_of_one_entry_at_once_leave_a_consistent_registry(
    tmp_path: Path, registry: Registry
) -> None:
    fedora_tree(tmp_path / "up", versions=("40",))
    with UpstreamServer(tmp_path / "up") as srv:
        racing = [_start(srv, f"{registry.host}/race", tmp_path / f"p{n}") for n in range(2)]
        outputs = [p.communicate(timeout=120) for p in racing]
        # A racer may lose a race the registry referees (its entry fails and is retried on the
        # next pass, as a daemon does); the other publishes, and the registry stays consistent.
        codes = [p.returncode for p in racing]
        assert 0 in codes, [err[-2000:] for _, err in outputs]
        assert set(codes) <= {0, 1}, [err[-2000:] for _, err in outputs]
        single = _start(srv, f"{registry.host}/single", tmp_path / "single")
        _, err = single.communicate(timeout=120)
        assert 0 == single.returncode, err[-2000:]

    raced_tags = registry.list_tags("race/fedora")
    assert "40" in raced_tags
    (tmp_path / "copies").mkdir()
    for tag in raced_tags:  # every tag names a complete image: skopeo copies all of it
        registry.pull("race/fedora", tag, f"dir:{tmp_path / 'copies' / tag}")
    timestamp = [t for t in raced_tags if t.startswith("40-") and t[3:].isdigit()]
    stable = sorted(set(raced_tags) - set(timestamp))
    assert stable
    expected = [registry.inspect_raw("single/fedora", t) for t in stable]
    assert expected == [registry.inspect_raw("race/fedora", t) for t in stable]
    index = registry.inspect_raw("race/fedora", "40")
    assert [index] * len(timestamp) == [registry.inspect_raw("race/fedora", t) for t in timestamp]
