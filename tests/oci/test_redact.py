"""The secret registry: every spelling of a registered secret is masked, short ones are not."""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest

from containerdisks.oci import RegistryError
from containerdisks.oci.errors import error_from_response
from containerdisks.oci.redact import (
    MASK,
    MAX_EXPIRING,
    forget_all,
    redact,
    redact_data,
    register,
)

PASSWORD = 'pä ss+w/rd"\\x'  # a space, +, /, a quote, a backslash and a non-ASCII letter


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def spellings(secret: str) -> dict[str, str]:
    """How a server might echo ``secret``, by name."""
    basic = b64(f"alice:{secret}")
    return {
        "raw": secret,
        "base64": b64(secret),
        "base64 unpadded": b64(secret).rstrip("="),
        "base64 url-safe": base64.urlsafe_b64encode(secret.encode()).decode(),
        "Basic of user:password": basic,
        "Basic of another user": b64(f"mallory:{secret}"),
        "base64 with text after it": b64(f"x{secret}yz"),
        "percent-encoded": urllib.parse.quote(secret, safe=""),
        "percent-encoded, lower hex": urllib.parse.quote(secret, safe="").lower(),
        "percent-encoded, + for space": urllib.parse.quote_plus(secret),
        "percent-encoded Basic": urllib.parse.quote(f"Basic {basic}", safe=""),
        "JSON-escaped": json.dumps(secret)[1:-1],
        "JSON-escaped ASCII": json.dumps(secret, ensure_ascii=False)[1:-1],
    }


@pytest.mark.parametrize("name", list(spellings(PASSWORD)))
def test_every_spelling_is_masked(name: str) -> None:
    register(PASSWORD)
    register(f"alice:{PASSWORD}")
    echoed = spellings(PASSWORD)[name]
    out = redact(f"error: {echoed} (end)")
    assert MASK in out
    assert echoed not in out
    assert out.startswith("error: ")
    assert out.endswith(" (end)")
    assert len(out) < len(echoed) + 20  # at most a few base64 characters around the mask


def test_nothing_registered_changes_nothing() -> None:
    text = "HTTP 401 UNAUTHORIZED: " + PASSWORD
    assert redact(text) is text


def test_short_strings_are_not_registered() -> None:
    register("abc")
    register("")
    register(None)
    assert redact("abc abcabc") == "abc abcabc"


def test_longest_spelling_wins_and_overlaps_are_masked_once() -> None:
    register("secret-one")
    register("secret-one-and-more")
    assert redact("a secret-one-and-more b secret-one c") == f"a {MASK} b {MASK} c"


def test_expiring_secrets_are_bounded_and_lasting_ones_stay() -> None:
    register("lasting-password")
    first = "token-0000-first"
    register(first, expiring=True)
    for n in range(MAX_EXPIRING):
        register(f"token-{n:04d}-later", expiring=True)
    assert redact(first) == first  # the oldest token was dropped
    assert redact(f"token-{MAX_EXPIRING - 1:04d}-later") == MASK
    assert redact("lasting-password") == MASK


def test_forget_all() -> None:
    register("forgettable")
    forget_all()
    assert redact("forgettable") == "forgettable"


def test_redact_data_masks_keys_values_and_nested() -> None:
    register("deep-secret")
    data = {"deep-secret": ["x deep-secret", {"k": ("deep-secret",)}], "n": 1, "none": None}
    assert redact_data(data) == {MASK: [f"x {MASK}", {"k": [MASK]}], "n": 1, "none": None}


def test_a_registry_that_echoes_a_secret_in_its_error_body() -> None:
    register(PASSWORD)
    for body in (
        json.dumps({"errors": [{"code": "DENIED", "message": f"bad password {PASSWORD}"}]}),
        f"<html>Authorization: Basic {b64('alice:' + PASSWORD)}</html>",
    ):
        error = error_from_response("reg/repo", status=403, body=body.encode())
        assert isinstance(error, RegistryError)
        assert PASSWORD not in str(error)
        assert PASSWORD not in error.message
        assert b64("alice:" + PASSWORD) not in str(error)
        assert MASK in error.message


@pytest.mark.parametrize("json_body", [True, False], ids=["OCI error body", "plain text body"])
def test_a_secret_across_the_cut_of_a_long_message_leaves_no_part(json_body: bool) -> None:
    secret = "0123456789-secret-" * 4  # 72 characters
    register(secret)
    for filler in (270, 290, 1000):
        text = "x" * filler + secret + " and  more"
        body = json.dumps({"errors": [{"code": "DENIED", "message": text}]}) if json_body else text
        error = error_from_response("reg/repo", status=403, body=body.encode())
        assert secret[:8] not in str(error), filler


def test_a_secret_with_a_run_of_spaces_is_masked_before_spaces_collapse() -> None:
    secret = "two  spaces\there"
    register(secret)
    error = error_from_response("reg/repo", status=500, body=f"echo: {secret}".encode())
    assert "spaces" not in str(error)
    assert MASK in str(error)
