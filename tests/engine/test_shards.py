"""Shards for CI jobs, the pure part: engine/shards.py's assignment, `--shard I/N` and an
Indexed Job's variables in the settings, and which catalog items an engine of shard I holds.

- On the default catalog, for N = 1..8: every entry in exactly one shard, the shards' union the
  unsharded run's items, the most loaded shard within 1.1x the mean or within one entry's arches
  of it.
- Deterministic: input order, Python's hash salt (another process with another PYTHONHASHSEED)
  and a focus change nothing.
- Bad values are one line naming the flag or the variable.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from containerdisks.catalog import Catalog, load_catalog
from containerdisks.engine.core import Engine
from containerdisks.engine.shards import assign, catalog_weights, imbalance, loads
from containerdisks.settings import ConfigError, load_settings

COUNTS = range(1, 9)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog({}, config_name="default catalog")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("CONTAINERDISKS_SHARD", "CONTAINERDISKS_SHARD_COUNT", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CONTAINERDISKS_RESULTS_FILE", raising=False)
    return monkeypatch


def weights_of(catalog: Catalog) -> dict[str, int]:
    return catalog_weights(b.item for b in catalog.items)


@pytest.mark.parametrize("count", COUNTS)
def test_every_entry_of_the_default_catalog_lands_in_exactly_one_shard(
    catalog: Catalog, count: int
) -> None:
    weights = weights_of(catalog)
    shards = assign(weights.items(), count)
    keys = [k for shard in shards for k in shard]
    assert len(shards) == count
    assert sorted(keys) == sorted(weights)  # each once: no key lost, none twice


@pytest.mark.parametrize("count", COUNTS)
def test_the_default_catalog_is_balanced_by_arches(catalog: Catalog, count: int) -> None:
    weights = weights_of(catalog)
    shards = assign(weights.items(), count)
    per_shard = loads(shards, weights)
    mean = sum(weights.values()) / count
    heaviest = max(range(count), key=lambda i: per_shard[i])
    one_entry = max(weights[k] for k in shards[heaviest])
    assert per_shard[heaviest] <= 1.1 * mean or per_shard[heaviest] - mean <= one_entry, (
        per_shard,
        imbalance(shards, weights),
    )


def test_arches_not_entries_are_balanced() -> None:
    """Four 1-arch entries and two 3-arch ones: by count 3 and 3 entries, by arches 5 and 5."""
    weights = {"a:1": 3, "b:1": 3, "c:1": 1, "d:1": 1, "e:1": 1, "f:1": 1}
    shards = assign(weights.items(), 2)
    assert [5, 5] == loads(shards, weights)
    assert [["a:1", "c:1", "e:1"], ["b:1", "d:1", "f:1"]] == shards  # ties: key, lowest index


def test_input_order_does_not_change_the_shards(catalog: Catalog) -> None:
    weights = list(weights_of(catalog).items())
    expected = assign(weights, 5)
    rng = random.Random(24)
    for _ in range(20):
        rng.shuffle(weights)
        assert expected == assign(weights, 5)


def test_another_process_with_another_hash_seed_computes_the_same_shards(
    catalog: Catalog,
) -> None:
    script = (
        "import json; from containerdisks.catalog import load_catalog;"
        "from containerdisks.engine.shards import assign, catalog_weights;"
        "c = load_catalog({}, config_name='c');"
        "w = catalog_weights(b.item for b in c.items);"
        "print(json.dumps([assign(w.items(), n) for n in range(1, 9)]))"
    )
    expected = [assign(weights_of(catalog).items(), n) for n in COUNTS]
    for seed in ("1", "4242"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout
        assert expected == json.loads(out)


def test_more_shards_than_entries_leaves_shards_empty() -> None:
    assert [["a:1"], ["b:1"], []] == assign([("b:1", 2), ("a:1", 2)], 3)


@pytest.mark.parametrize(
    ("entries", "count", "message"),
    [
        ([("a:1", 1), ("a:1", 2)], 2, "listed twice"),
        ([("a:1", 0)], 2, "below 1"),
        ([("a:1", 1)], 0, "below 1"),
    ],
)
def test_a_callers_bug_is_a_value_error(
    entries: list[tuple[str, int]], count: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        assign(entries, count)


def items_of(catalog: Catalog, **flags: str) -> list[str]:
    return [b.item.label for b in Engine(load_settings(flags, sharded=True), catalog).items]


@pytest.mark.parametrize("count", COUNTS)
def test_the_shards_engines_together_hold_the_unsharded_items_once(
    catalog: Catalog, count: int, clean_env: pytest.MonkeyPatch
) -> None:
    whole = items_of(catalog)
    parts = [items_of(catalog, shard=f"{i}/{count}") for i in range(count)]
    held = [k for part in parts for k in part]
    assert sorted(whole) == sorted(held)


def test_a_focus_does_not_move_an_entry_to_another_shard(
    catalog: Catalog, clean_env: pytest.MonkeyPatch
) -> None:
    """cirros is published only when focused; it still has its one place among the shards."""
    for key in ("cirros:6.1", "debian:12", "fedora:*"):
        holders = [i for i in range(4) if key in items_of(catalog, shard=f"{i}/4")]
        focused = [i for i in range(4) if items_of(catalog, shard=f"{i}/4", focus=key)]
        assert len(focused) == 1
        assert ([] if key == "cirros:6.1" else focused) == holders  # cirros: only when focused


def test_shard_flag_sets_the_shard_and_the_default_results_file(
    clean_env: pytest.MonkeyPatch,
) -> None:
    settings = load_settings({"shard": "2/5"}, sharded=True)
    assert (2, 5) == settings.shard_part
    assert Path("results-2-of-5.json") == settings.results_file
    given = load_settings({"shard": "2/5", "results_file": "mine.json"}, sharded=True)
    assert Path("mine.json") == given.results_file
    assert load_settings({}, sharded=True).shard_part is None


def test_an_indexed_job_sets_the_shard_from_its_completion_index(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("CONTAINERDISKS_SHARD_COUNT", "4")
    clean_env.setenv("JOB_COMPLETION_INDEX", "3")
    settings = load_settings({}, sharded=True)
    assert ("3/4", Path("results-3-of-4.json")) == (settings.shard, settings.results_file)
    assert "1/2" == load_settings({"shard": "1/2"}, sharded=True).shard  # the flag wins


def test_a_completion_index_without_a_count_shards_nothing(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("JOB_COMPLETION_INDEX", "3")
    assert ("", Path("results.json")) == (
        load_settings({}, sharded=True).shard,
        load_settings({}, sharded=True).results_file,
    )


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({}, {"shard": "4/4"}, "invalid flag --shard: Value error, '4/4': the index counts from 0"),
        ({}, {"shard": "1"}, "invalid flag --shard: Value error, '1' is not INDEX/COUNT"),
        ({}, {"shard": "a/b"}, "invalid flag --shard: Value error, 'a/b' is not INDEX/COUNT"),
        ({}, {"shard": "0/0"}, "invalid flag --shard: Value error, '0/0': the count must be"),
        ({}, {"shard": "0/5000"}, "invalid flag --shard: Value error, '0/5000': the count must"),
        ({"CONTAINERDISKS_SHARD_COUNT": "4"}, {}, "setting 'shard_count' is 4 but JOB_COMPL"),
        (
            {"CONTAINERDISKS_SHARD_COUNT": "4", "JOB_COMPLETION_INDEX": "4"},
            {},
            "invalid environment variable JOB_COMPLETION_INDEX '4': expected an index from 0 to 3",
        ),
        (
            {"CONTAINERDISKS_SHARD_COUNT": "4", "JOB_COMPLETION_INDEX": "-1"},
            {},
            "invalid environment variable JOB_COMPLETION_INDEX '-1'",
        ),
        (
            {"CONTAINERDISKS_SHARD_COUNT": "-2"},
            {},
            "invalid environment variable CONTAINERDISKS_SH",
        ),
        ({"CONTAINERDISKS_SHARD": "9"}, {}, "invalid environment variable CONTAINERDISKS_SHARD:"),
    ],
)
def test_bad_shard_values_are_one_line_naming_where_they_came_from(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], flags: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(flags, sharded=True)
    assert str(raised.value).startswith(expected)
    assert "\n" not in str(raised.value)


def test_the_command_line_refuses_a_bad_shard_with_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "containerdisks", "images", "push", "--shard", "3/3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert (2, "") == (done.returncode, done.stdout)
    assert done.stderr.startswith("containerdisks: invalid flag --shard: ")
    assert 1 == len(done.stderr.splitlines())


def test_commands_that_publish_no_shard_ignore_an_indexed_jobs_variables(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """verify and promote in the same pipeline read the merged file, not results-I-of-N.json."""
    clean_env.setenv("CONTAINERDISKS_SHARD_COUNT", "4")
    settings = load_settings({})
    assert ("", Path("results.json")) == (settings.shard, settings.results_file)
    clean_env.setenv("JOB_COMPLETION_INDEX", "2")
    assert Path("results.json") == load_settings({}).results_file
    assert Path("results-2-of-4.json") == load_settings({}, sharded=True).results_file
