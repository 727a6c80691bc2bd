"""JSON from outside nested past the parser's limit is a malformed document, never a traceback."""

from __future__ import annotations

import pytest

from containerdisks.oci import safejson
from containerdisks.oci.auth import _parse_token_reply
from containerdisks.oci.errors import InvalidManifestError, ProtocolError, _first_error
from containerdisks.oci.media import parse_json_object

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_loads_turns_a_recursion_error_into_value_error() -> None:
    with pytest.raises(ValueError, match="JSON nested too deep"):
        safejson.loads(DEEP)
    assert {"a": [1]} == safejson.loads(b'{"a": [1]}')


def test_a_token_reply_nested_too_deep_is_one_protocol_error() -> None:
    with pytest.raises(ProtocolError) as e:
        _parse_token_reply(DEEP, "registry.test")
    assert "registry.test: reply is not JSON" == str(e.value)


def test_an_error_body_nested_too_deep_is_not_an_oci_error_body() -> None:
    assert _first_error(DEEP) is None


def test_a_manifest_nested_too_deep_is_an_invalid_manifest() -> None:
    with pytest.raises(InvalidManifestError) as e:
        parse_json_object(DEEP, "manifest x")
    assert "manifest x: not JSON: JSON nested too deep" == str(e.value)
