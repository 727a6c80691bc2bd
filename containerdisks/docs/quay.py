"""The two Quay API calls `docs publish` makes: set a repository's description, make it public.

One job: `PUT /api/v1/repository/<org>/<repo>` with `{"description": ...}` and
`POST /api/v1/repository/<org>/<repo>/changevisibility` with `{"visibility": "public"}`, as
medius's `pkg/quay` does, with `Authorization: Bearer <token>` and `Content-Type:
application/json`.

Decisions that shaped it:
- Errors are one line naming the method, the API path and the status, with Quay's own words
  (`error_message`, else `detail`, else the start of the body); they never carry the token:
  the client registers it with `containerdisks.oci.redact` when it is made, and any echo of it
  in a server's answer (raw, base64, percent-encoded) is masked before it is shown.
- Both calls are idempotent, so connection failures, timeouts and 408/429/5xx are retried under
  `containerdisks.retry`'s policy (bounded attempts, `Retry-After` honoured); any other status
  fails at once (a 401 or 404 will not pass by waiting). medius had no retries and no timeouts.
- The base URL is a setting (`quay_api_url`), so tests talk to a fake Quay on loopback.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import structlog

from containerdisks import __version__
from containerdisks.oci import safejson
from containerdisks.oci.redact import redact, register
from containerdisks.retry import (
    RetryEvent,
    RetryPolicy,
    parse_retry_after,
    retrying,
    temporary_status,
)

__all__ = ["QuayClient", "QuayError"]

log = structlog.get_logger(__name__)


class QuayError(Exception):
    """A Quay API call failed for good; the message is one line, without the token."""


class _TransientError(Exception):
    """A call failed for a reason that may pass; the message is one line, masked."""

    temporary = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuayClient:
    """A Quay API session. Use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        connect_timeout: float = 15.0,
        read_timeout: float = 60.0,
        attempts: int = 4,
        ca_file: Path | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not token:
            raise ValueError("empty Quay token")
        register(token)
        self._base = base_url.rstrip("/")
        self._token = token
        # Every call is small: a server that trickles its answer is cut by the total too.
        self._timeout = aiohttp.ClientTimeout(
            total=connect_timeout + 2 * read_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._read = read_timeout
        self._retry = retry or RetryPolicy(attempts=attempts)
        if sleep is not None:
            self._retry = replace(self._retry, sleep=sleep)
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> QuayClient:
        connector = None
        if self._ca_file is not None:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=str(self._ca_file))
            connector = aiohttp.TCPConnector(ssl=context)
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=connector,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "User-Agent": f"containerdisks/{__version__}",
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def set_description(self, org: str, repository: str, markdown: str) -> None:
        await self._call("PUT", f"/api/v1/repository/{org}/{repository}", {"description": markdown})

    async def make_public(self, org: str, repository: str) -> None:
        await self._call(
            "POST",
            f"/api/v1/repository/{org}/{repository}/changevisibility",
            {"visibility": "public"},
        )

    # -- internals ----------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        return redact(text)

    async def _call(self, method: str, path: str, body: dict[str, Any]) -> None:
        request = f"{method} {path}"

        def logged(retry: RetryEvent, _: BaseException) -> None:
            log.warning(
                "quay_retry", request=request, error=self._mask(retry.reason), attempt=retry.attempt
            )

        def gave_up(error: BaseException, failures: int) -> QuayError:
            plural = "s" if failures > 1 else ""
            return QuayError(f"{self._mask(str(error))} (after {failures} attempt{plural})")

        await retrying(
            request,
            lambda: self._once(method, path, body),
            self._retry,
            kind="quay",
            address=self._base,
            on_retry=logged,
            exhausted=gave_up,
        )

    async def _once(self, method: str, path: str, body: dict[str, Any]) -> None:
        assert self._session is not None, "use QuayClient as an async context manager"
        what = f"{method} {path}"
        data = json.dumps(body).encode()
        try:
            async with self._session.request(method, self._base + path, data=data) as resp:
                if 200 <= resp.status < 300:
                    return  # the answer's body says nothing we use: not read at all
                text = (await _head_of(resp)).decode(errors="replace")
                status = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                message = self._mask(f"{what}: {status}{_reason(text)}")
                if temporary_status(resp.status):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    raise _TransientError(message, retry_after)
                raise QuayError(message)
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            raise _TransientError(
                f"{what}: timed out (no answer within {self._read}s, or not all of it "
                f"within {self._timeout.total:g}s)"
            ) from None
        except aiohttp.ClientConnectorError as e:
            raise _TransientError(f"{what}: cannot connect to {self._base}: {e.os_error}") from None
        except aiohttp.ClientError as e:
            raise _TransientError(f"{what}: {type(e).__name__}: {e}") from None


#: The most of an error answer read: Quay's are a few hundred bytes; the rest is not awaited.
_MAX_ERROR_BODY = 64 << 10


async def _head_of(resp: aiohttp.ClientResponse) -> bytes:
    """The body up to `_MAX_ERROR_BODY` bytes (or its end, if sooner)."""
    head = bytearray()
    while len(head) < _MAX_ERROR_BODY:
        chunk = await resp.content.read(_MAX_ERROR_BODY - len(head))
        if not chunk:
            break
        head += chunk
    return bytes(head)


def _reason(text: str) -> str:
    """Quay's explanation: `error_message`, else `detail`, else the body's first line."""
    try:
        data = safejson.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error_message", "detail", "message", "error"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return ": " + _one_line(value)
    line = _one_line(text)
    return f": {line}" if line else ""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(redact(text).split())  # masked before it is cut: no half token is left
    return line if len(line) <= limit else line[: limit - 3] + "..."
