"""Error responses become the right class, parsed defensively, in one line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from containerdisks.oci import (
    BlobUnknownError,
    CertificateError,
    ConnectError,
    DeniedError,
    ManifestUnknownError,
    NotFoundError,
    OCIError,
    RegistryError,
    RepositoryUnknownError,
    TLSError,
    TransportError,
    UnauthorizedError,
    UnsupportedError,
)
from containerdisks.oci.errors import error_from_response, one_line, parse_retry_after

SUBJECT = "manifest 127.0.0.1:5000/cd/fedora:41"


def body(code: str, message: str = "msg", detail: object = None) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "NAME_UNKNOWN", RepositoryUnknownError),
        (404, "MANIFEST_UNKNOWN", ManifestUnknownError),
        (404, "BLOB_UNKNOWN", BlobUnknownError),
        (401, "UNAUTHORIZED", UnauthorizedError),
        (403, "DENIED", DeniedError),
        (400, "MANIFEST_INVALID", RegistryError),
        (429, "TOOMANYREQUESTS", RegistryError),
        (401, "", UnauthorizedError),
        (403, "", DeniedError),
        (405, "UNSUPPORTED", UnsupportedError),  # distribution with deletes off
        (405, "", UnsupportedError),  # a proxy's bare 405
        (400, "UNSUPPORTED", UnsupportedError),
    ],
)
def test_status_and_code_pick_the_class(status: int, code: str, cls: type[RegistryError]) -> None:
    error = error_from_response(SUBJECT, status=status, body=body(code) if code else b"")
    assert type(error) is cls
    assert error.status == status
    assert error.code == code


def test_not_found_classes_share_a_base_a_caller_can_catch() -> None:
    for cls in (RepositoryUnknownError, ManifestUnknownError, BlobUnknownError):
        assert issubclass(cls, NotFoundError)
        assert issubclass(cls, RegistryError)
    assert issubclass(DeniedError, UnauthorizedError)
    assert issubclass(CertificateError, TLSError)
    assert issubclass(TLSError, TransportError)
    assert issubclass(TransportError, OCIError)


def test_quay_expired_tag_is_manifest_unknown() -> None:
    message = "Tag 41 was deleted or has expired. To pull, revive via time machine"
    error = error_from_response(SUBJECT, status=404, body=body("unknown", message))
    assert type(error) is ManifestUnknownError
    assert error.code == "UNKNOWN"
    assert "revive via time machine" in str(error)


def test_bare_404_uses_the_callers_default() -> None:
    error = error_from_response(SUBJECT, status=404, body=b"", not_found=BlobUnknownError)
    assert type(error) is BlobUnknownError
    plain = error_from_response(SUBJECT, status=404, body=b"404 page not found\n")
    assert type(plain) is RegistryError
    assert str(plain) == f"{SUBJECT}: HTTP 404: 404 page not found"


@pytest.mark.parametrize(
    ("status", "temporary"),
    [(408, True), (429, True), (500, True), (502, True), (503, True), (504, True),
     (400, False), (401, False), (403, False), (404, False), (501, False)],
)  # fmt: skip
def test_temporary_statuses(status: int, temporary: bool) -> None:
    assert error_from_response(SUBJECT, status=status, body=b"").temporary is temporary


def test_haproxy_page_with_bare_newlines_becomes_one_line() -> None:
    error = error_from_response(
        SUBJECT, status=429, body=b"Too Many Requests (HAP429).\n\n", retry_after="7"
    )
    assert str(error) == f"{SUBJECT}: HTTP 429: Too Many Requests (HAP429)."
    assert error.retry_after == 7.0
    assert error.temporary


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"errors": "nope"}',
        b'{"errors": []}',
        b'{"errors": [42]}',
        b'{"errors": [{"code": 7, "message": null}]}',
        b"\xff\xfe\x00garbage",
        b"<html>\r\n<body>\r\n<h1>502 Bad Gateway</h1>\r\n</body>\r\n</html>",
    ],
)
def test_malformed_bodies_never_raise_and_stay_one_line(raw: bytes) -> None:
    error = error_from_response(SUBJECT, status=502, body=raw)
    assert type(error) is RegistryError
    assert "\n" not in str(error)
    assert "\r" not in str(error)
    assert str(error).startswith(f"{SUBJECT}: HTTP 502")


def test_long_messages_are_cut() -> None:
    error = error_from_response(SUBJECT, status=500, body=body("X", "word " * 500))
    assert len(str(error)) < 400
    assert one_line("a\n b\t c") == "a b c"


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = parse_retry_after(later)
    assert seconds is not None
    assert 25 <= seconds <= 31
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_transport_errors_are_temporary_except_certificates() -> None:
    assert ConnectError("x", host="h").temporary
    assert TLSError("x", host="h").temporary
    assert not CertificateError("x", host="h").temporary
