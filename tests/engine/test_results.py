"""The results file: medius's format, our `Digest`, and the reading side's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from containerdisks import oci
from containerdisks.engine.results import (
    Result,
    ResultsError,
    read_results,
    recorded_digest,
    write_results,
)
from containerdisks.oci.layout import LayoutStore


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


async def test_the_recorded_digest_is_the_records_else_what_its_first_tag_names(
    tmp_path: Path,
) -> None:
    store = LayoutStore(tmp_path / "staging")
    config = await store.put_blob("fedora", b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": config.digest, "size": 2},
            "layers": [],
        }
    ).encode()
    pushed = await store.put_manifest("fedora", "40-2406011530", oci.OCI_MANIFEST, manifest)
    other = "sha256:" + "b" * 64

    # A record with its Digest is about that digest, whatever the tag names now.
    assert other == await recorded_digest(
        Result(tags=["fedora:40-2406011530"], digest=other), store, "fedora"
    )
    # medius's record (no Digest, `name:tag`): what Tags[0] names in the repository now.
    medius = Result(tags=["fedora:40-2406011530", "fedora:40"])
    assert pushed == await recorded_digest(medius, store, "fedora")
    # its first tag gone, or no tags: no digest
    assert await recorded_digest(Result(tags=["fedora:40-2406011531"]), store, "fedora") is None
    assert await recorded_digest(Result(), store, "fedora") is None


def test_a_stage_keeps_the_tags_and_the_digest_it_names_or_the_recorded_one() -> None:
    pushed = Result(tags=["fedora:40-2406011530"], digest="sha256:" + "a" * 64)
    assert Result(pushed.tags, "", "verify", pushed.digest) == pushed.after("verify")
    resolved = "sha256:" + "c" * 64
    assert Result(pushed.tags, "boom", "promote", resolved) == pushed.after(
        "promote", "boom", resolved
    )
    assert Result(["fedora:40"], "boom", "verify", "") == Result(tags=["fedora:40"]).after(
        "verify", "boom"
    )
