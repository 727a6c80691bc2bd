"""Digests and manifest parsing: exact bytes in, defensive errors out."""

from __future__ import annotations

import hashlib
import json

import pytest

from containerdisks.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    DigestMismatchError,
    InvalidManifestError,
    InvalidReferenceError,
    Manifest,
    Platform,
    compute_digest,
    is_digest,
    parse_digest,
    verify_digest,
)
from containerdisks.oci.media import detect_media_type, parse_image_manifest, parse_index

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_compute_digest_names_the_algorithm_and_the_hex_of_the_bytes() -> None:
    data = b"hello"
    assert compute_digest(data) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert compute_digest(data, "sha512") == "sha512:" + hashlib.sha512(data).hexdigest()


def test_a_digest_parses_into_algorithm_and_hex_and_a_bad_hex_is_no_digest() -> None:
    assert parse_digest(D1) == ("sha256", "1" * 64)
    assert is_digest(D1)
    assert not is_digest("sha256:xyz")


def test_verify_digest_accepts_the_bytes_of_either_algorithm() -> None:
    data = b"hello"
    verify_digest(data, compute_digest(data), subject="blob x")
    verify_digest(data, compute_digest(data, "sha512"), subject="blob x")


def test_a_digest_mismatch_names_the_subject_and_the_expected_digest() -> None:
    with pytest.raises(DigestMismatchError) as caught:
        verify_digest(b"other", compute_digest(b"hello"), subject="blob x")
    assert str(caught.value).startswith("blob x: digest mismatch: expected sha256:2cf24")


def test_an_unknown_digest_algorithm_is_refused() -> None:
    with pytest.raises(InvalidReferenceError):
        compute_digest(b"hello", "md5")


def manifest(doc: object, media_type: str) -> Manifest:
    data = json.dumps(doc).encode()
    return Manifest(media_type, data, compute_digest(data))


def test_parse_index_reads_platforms_in_order() -> None:
    index = manifest(
        {
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": D1, "size": 10,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": DOCKER_MANIFEST, "digest": D2, "size": 20,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"a": "b", "n": 1}},
                {"mediaType": DOCKER_MANIFEST, "digest": D2, "size": 20},
            ],
        },
        DOCKER_MANIFEST_LIST,
    )  # fmt: skip
    entries = parse_index(index, "x")
    assert [e.platform for e in entries] == [
        Platform("linux", "arm64", "v8"),
        Platform("unknown", "unknown"),
        None,
    ]
    assert entries[1].annotations == {"a": "b"}
    assert str(entries[0].platform) == "linux/arm64/v8"
    assert index.is_index
    assert index.descriptor().size == index.size


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"manifests": "x"}, "without a manifests list"),
        ({"manifests": [1]}, "not an object"),
        ({"manifests": [{"digest": D1, "size": 1}]}, "without mediaType"),
        ({"manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:1", "size": 1}]}, "digest"),
        ({"manifests": [{"mediaType": OCI_MANIFEST, "digest": D1, "size": -1}]}, "size"),
        ({"manifests": [{"mediaType": OCI_MANIFEST, "digest": D1, "size": True}]}, "size"),
    ],
)
def test_parse_index_rejects_malformed(doc: object, reason: str) -> None:
    with pytest.raises(InvalidManifestError) as caught:
        parse_index(manifest(doc, OCI_INDEX), "index q/r:t")
    assert str(caught.value).startswith("index q/r:t: ")
    assert reason in str(caught.value)


def test_parse_image_manifest() -> None:
    doc = {
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D1,
            "size": 3,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": 9}
        ],
    }
    image = parse_image_manifest(manifest(doc, OCI_MANIFEST), "x")
    assert image.config.digest == D1
    assert [layer.digest for layer in image.layers] == [D2]
    with pytest.raises(InvalidManifestError, match="unsupported manifest media type"):
        parse_image_manifest(manifest(doc, OCI_INDEX), "x")
    with pytest.raises(InvalidManifestError, match="without a layers list"):
        parse_image_manifest(manifest({"config": doc["config"]}, OCI_MANIFEST), "x")
    with pytest.raises(InvalidManifestError, match="not JSON"):
        parse_image_manifest(Manifest(OCI_MANIFEST, b"{", D1), "x")


@pytest.mark.parametrize(
    ("doc", "content_type", "expected"),
    [
        ({"mediaType": OCI_INDEX, "manifests": []}, OCI_INDEX, OCI_INDEX),
        ({"mediaType": OCI_INDEX, "manifests": []}, "application/json", OCI_INDEX),
        ({"manifests": []}, OCI_INDEX + "; charset=utf-8", OCI_INDEX),
        ({"manifests": []}, None, OCI_INDEX),
        ({"config": {}, "layers": []}, "application/json", OCI_MANIFEST),
        ({"schemaVersion": 2, "config": {}, "layers": []}, DOCKER_MANIFEST, DOCKER_MANIFEST),
    ],
)
def test_detect_media_type(doc: object, content_type: str | None, expected: str) -> None:
    assert detect_media_type(json.dumps(doc).encode(), content_type, "x") == expected


def test_detect_media_type_refuses_a_mismatch() -> None:
    data = json.dumps({"mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()
    with pytest.raises(InvalidManifestError, match="does not match"):
        detect_media_type(data, DOCKER_MANIFEST, "x")
    with pytest.raises(InvalidManifestError, match="cannot tell"):
        detect_media_type(b"{}", "application/json", "x")
    with pytest.raises(InvalidManifestError, match="not a JSON object"):
        detect_media_type(b"[]", OCI_MANIFEST, "x")
