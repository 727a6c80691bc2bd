"""Fixtures of the oci tests: a guard that no secret reaches any output, and a request log.

Every test here runs with all loggers at DEBUG, captured; when it ends, :func:`no_secret_leaks`
fails it if a known secret (the test user's password, its Basic auth string, anything a test
adds to ``secrets``: issued tokens, identity tokens) shows in a log record or on stdout/stderr.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp
import pytest

from tests.support.registry import PASSWORD, USERNAME


@pytest.fixture
def secrets() -> set[str]:
    """Strings that must appear in no output of the test; add the ones the test creates."""
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    return {PASSWORD, basic}


@pytest.fixture(autouse=True)
def no_secret_leaks(
    secrets: set[str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    out, err = capsys.readouterr()
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    records += caplog.records  # this teardown, so far
    logged = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in records
    )
    # pytest.fail without a traceback: an assertion's report would print the secrets
    for secret in secrets:
        for what, text in (
            ("logged", logged),
            ("printed on stdout", out),
            ("printed on stderr", err),
        ):
            if not secret or secret in text:
                pytest.fail(f"a secret was {what}", pytrace=False)


@dataclass
class RequestLog:
    """Every HTTP request a session made: (method, path, status); status 0 when it failed."""

    entries: list[tuple[str, str, int]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def count(self, method: str | None = None, contains: str = "") -> int:
        return sum(
            1 for m, path, _ in self.entries if (method is None or m == method) and contains in path
        )

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.entries]

    def clear(self) -> None:
        self.entries.clear()
        self.headers.clear()


@dataclass
class Traced:
    session: aiohttp.ClientSession
    log: RequestLog


@pytest.fixture
async def traced() -> AsyncIterator[Traced]:
    """An aiohttp session whose requests are logged (give it to ``RegistryClient(session=)``)."""
    log = RequestLog()
    trace = aiohttp.TraceConfig()

    async def on_end(
        _: aiohttp.ClientSession, __: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        log.entries.append((params.method, params.url.path, params.response.status))
        log.headers.append(dict(params.headers))

    async def on_error(
        _: aiohttp.ClientSession,
        __: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        log.entries.append((params.method, params.url.path, 0))
        log.headers.append(dict(params.headers))

    trace.on_request_end.append(on_end)
    trace.on_request_exception.append(on_error)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield Traced(session, log)
