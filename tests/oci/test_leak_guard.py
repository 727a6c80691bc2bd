"""The secret guard of tests/oci/conftest.py fails a test that leaks, in an inner session."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def test_the_guard_fails_tests_that_log_or_print_a_secret(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    # the inner secrets are its own: the outer guard (this test's) must not see them
    pytester.makepyfile(
        test_leaks="""
import logging

def test_logs_it(secrets: set[str]) -> None:
    secrets.add("inner-password-789")
    logging.getLogger("anything").debug("password is %s", "inner-password-789")

def test_prints_an_added_one(secrets: set[str]) -> None:
    secrets.add("issued-token-123")
    print("token: issued-token-123")

def test_says_nothing(secrets: set[str]) -> None:
    secrets.add("issued-token-456")
    logging.getLogger("anything").debug("a token was issued")
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_logs_it*",
            "*a secret was logged*",
            "*ERROR at teardown of test_prints_an_added_one*",
            "*a secret was printed on stdout*",
        ]
    )
