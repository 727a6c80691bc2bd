"""Shards for CI jobs, for real: three `images push --shard I/3` processes at once against a real
registry and a loopback upstream publish what one unsharded push publishes, each entry once, and
their merged results feed one real `images promote`.

The verify between push and promote is stood in for by moving the merged records to stage
`verify` (what a passing verify writes); verify itself reads the same merged file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import clean_env
from tests.support.registry import Registry
from tests.support.synthetic import synthetic_catalog
from tests.support.upstream_server import UpstreamServer

SHARDS = 3
ENTRIES = 7


def containerdisks(*args: str) -> list[str]:
    return [sys.executable, "-m", "containerdisks", *args, "--log-format", "json"]


def push_argv(srv: UpstreamServer, target: str, config: Path, work: Path, *extra: str) -> list[str]:
    return containerdisks(
        "images",
        "push",
        "--dry-run=false",
        "--config",
        str(config),
        "--source-registry",
        target,
        "--work-dir",
        str(work),
        *srv.mirror_args(),
        *extra,
    )


def read(path: Path) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(path.read_text())
    return data


def without_timestamp(record: dict[str, object]) -> tuple[object, ...]:
    """A record as two runs minutes apart agree on: digest, stage, and the tags but the
    `<version>-<YYMMDDhhmm>` one (its first)."""
    tags = record["Tags"]
    assert isinstance(tags, list)
    return record["Digest"], record["Stage"], tuple(tags[1:])


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[UpstreamServer, Path, dict[str, int]]]:
    entries = synthetic_catalog(tmp_path / "up", tmp_path / "catalog.yaml", ENTRIES, tmp_path / "d")
    with UpstreamServer(tmp_path / "up") as srv:
        yield srv, tmp_path / "catalog.yaml", entries


def test_sharded_pushes_publish_the_unsharded_result_once_and_feed_one_promote(
    tmp_path: Path,
    registry: Registry,
    upstream: tuple[UpstreamServer, Path, dict[str, int]],
) -> None:
    srv, config, entries = upstream
    host = registry.host
    whole = subprocess.run(
        push_argv(srv, f"{host}/whole", config, tmp_path / "w0", "--results-file", "whole.json"),
        capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert 0 == whole.returncode, whole.stderr[-2000:]
    srv.clear()

    jobs = [
        subprocess.Popen(
            push_argv(srv, f"{host}/sharded", config, tmp_path / f"w{i + 1}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=clean_env(JOB_COMPLETION_INDEX=str(i), CONTAINERDISKS_SHARD_COUNT=str(SHARDS)),
        )
        for i in range(SHARDS)
    ]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [0] * SHARDS == [job.returncode for job in jobs], [err[-2000:] for _, err in outputs]

    # Each job wrote its own results-I-of-N.json; together they are the unsharded run's.
    files = [tmp_path / f"results-{i}-of-{SHARDS}.json" for i in range(SHARDS)]
    parts = [read(f) for f in files]
    keys = Counter(k for part in parts for k in part)
    unsharded = read(tmp_path / "whole.json")
    assert sorted(entries) == sorted(unsharded)
    assert dict.fromkeys(unsharded, 1) == dict(keys)
    assert all(parts)  # 7 entries of 1-3 arches over 3 shards: none is empty
    sharded = {k: r for part in parts for k, r in part.items()}
    assert {k: without_timestamp(r) for k, r in unsharded.items()} == {
        k: without_timestamp(r) for k, r in sharded.items()
    }
    # ... and each image was downloaded by exactly one of the jobs, once.
    downloads = Counter(r.path for r in srv.requests if r.method == "GET")
    assert sum(entries.values()) == len(downloads)
    assert {1} == set(downloads.values())

    merged = tmp_path / "merged.json"
    merge = subprocess.run(
        containerdisks("results", "merge", *map(str, files), "--results-file", str(merged)),
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert 0 == merge.returncode, merge.stderr
    assert sharded == read(merged)

    verified = {k: {**r, "Stage": "verify"} for k, r in read(merged).items()}
    merged.write_text(json.dumps(verified))
    promote = subprocess.run(
        containerdisks(
            "images", "promote", "--dry-run=false", "--source-registry", f"{host}/sharded",
            "--target-registry", f"{host}/prod", "--results-file", str(merged),
        ),
        capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert 0 == promote.returncode, promote.stderr[-2000:]
    promoted = read(merged)
    assert {"promote"} == {r["Stage"] for r in promoted.values()}
    for key, record in promoted.items():
        name = key.partition(":")[0]
        tags = record["Tags"]
        assert isinstance(tags, list)
        assert sorted(t.partition(":")[2] for t in tags) == sorted(
            registry.list_tags(f"prod/{name}")
        )
        assert registry.inspect_raw(f"prod/{name}", str(record["Digest"])) == registry.inspect_raw(
            f"sharded/{name}", str(record["Digest"])
        )


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def merge(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        containerdisks("results", "merge", *map(str, files), "--results-file", "out.json"),
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip


def test_merge_refuses_an_entry_two_files_record(tmp_path: Path) -> None:
    a = write(tmp_path / "results-0-of-2.json", {"s000:1": {"Stage": "push", "Tags": ["s000:1"]}})
    b = write(tmp_path / "results-1-of-3.json", {"s000:1": {"Stage": "push", "Err": "x"}})
    done = merge(tmp_path, a, b)
    assert (2, "") == (done.returncode, done.stdout)
    assert done.stderr == (
        f"containerdisks: results file {a} and results file {b} both record 's000:1'; sharded "
        "results must not overlap (were they made with the same --shard count and catalog?)\n"
    )
    assert not (tmp_path / "out.json").exists()


def test_merge_joins_ours_and_medius_files_and_empty_shards(tmp_path: Path) -> None:
    ours = {
        "s000:1": {
            "Tags": ["s000:1-2612071200", "s000:1"],
            "Stage": "push",
            "Digest": "sha256:" + "a" * 64,
        }
    }
    medius = {"fedora:42": {"Tags": ["fedora:42-2406011530"], "Stage": "push"}}
    files = [
        write(tmp_path / "a.json", ours),
        write(tmp_path / "b.json", medius),
        write(tmp_path / "c.json", {}),
    ]
    done = merge(tmp_path, *files)
    assert 0 == done.returncode, done.stderr
    assert {**ours, **medius} == read(tmp_path / "out.json")
    assert 0o600 == (tmp_path / "out.json").stat().st_mode & 0o777
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [[str(f), n] for f, n in zip(files, "110", strict=True)] + [
        ["->", "out.json", "2"]
    ] == rows


def test_merge_of_a_malformed_file_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", {"s000:1": {"Stage": "pushed"}})
    done = merge(tmp_path, bad)
    assert 2 == done.returncode
    assert (
        done.stderr
        == f"containerdisks: results file {bad}: entry 's000:1': unknown Stage 'pushed'\n"
    )
