"""The results file: medius's format, our `Digest`, and the reading side's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from containerdisks.engine.results import Result, ResultsError, read_results, write_results


def test_round_trip_keeps_every_field_and_leaves_empty_ones_out(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    results = {
        "fedora:42": Result(
            tags=["42-2601010000", "42"], stage="verify", digest="sha256:" + "a" * 64
        ),
        "ubuntu:24.04": Result(error="ubuntu:24.04: boom"),
    }
    write_results(path, results)
    assert {
        "fedora:42": {
            "Tags": ["42-2601010000", "42"],
            "Stage": "verify",
            "Digest": "sha256:" + "a" * 64,
        },
        "ubuntu:24.04": {"Stage": "push", "Err": "ubuntu:24.04: boom"},
    } == json.loads(path.read_text())
    assert results == read_results(path)


def test_a_medius_results_file_reads_without_digest(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"fedora:40": {"Tags": ["fedora:40-2406011530"], "Stage": "push"}}')
    assert {"fedora:40": Result(tags=["fedora:40-2406011530"])} == read_results(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ("{", "invalid JSON at line 1"),
        ("[]", "expected a JSON object"),
        ('{"a:1": 3}', "entry 'a:1' is not an object"),
        ('{"a:1": {"Tags": "x", "Stage": "push"}}', "Tags must be a list of strings"),
        ('{"a:1": {"Stage": "boot"}}', "unknown Stage 'boot'"),
        ('{"a:1": {"Stage": "push", "Err": 1}}', "Err must be a string"),
        (b'{"a:1": {"Err": "\xff"}}', "not UTF-8 (byte 0xff)"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    ],
)
def test_a_bad_results_file_is_one_line_naming_it(
    tmp_path: Path, text: str | bytes | None, message: str
) -> None:
    path = tmp_path / "results.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ResultsError) as e:
        read_results(path)
    assert str(path) in str(e.value)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bare_tags_drop_the_name_medius_writes() -> None:
    result = Result(tags=["fedora:40-2406011530", "fedora:40", "40-1.14"])
    assert ["40-2406011530", "40", "40-1.14"] == result.bare_tags()
