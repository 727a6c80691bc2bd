"""Plain request and response values passed between the auth flow and the transport.

Decision: these are immutable values with no I/O attached, so the auth flow (auth.py) can be
driven by hand in tests, and their ``repr`` is safe to log: it shows no query string, no
``Authorization`` value and no body. A request body, when there is one, is bytes held in the
value, so the auth flow can send the same request again after a challenge; a streamed body is not
part of a request value at all (it cannot be sent twice) and is handed to the transport beside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum

import yarl

__all__ = ["Purpose", "Request", "Response", "safe_url"]


def safe_url(url: yarl.URL) -> str:
    """``url`` without its query string and fragment (they may hold upload state or tokens)."""
    return str(url.with_query(None).with_fragment(None))


class Purpose(Enum):
    """Why a request is sent; the transport treats the kinds alike, the flow does not."""

    REGISTRY = "registry"
    TOKEN = "token"  # noqa: S105  (a kind of request, not a secret)


@dataclass(frozen=True)
class Request:
    """An HTTP request, with a small body of bytes when it has one (never shown by ``repr``)."""

    method: str
    url: yarl.URL
    headers: tuple[tuple[str, str], ...] = ()
    purpose: Purpose = Purpose.REGISTRY
    body: bytes | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def with_header(self, name: str, value: str) -> Request:
        """A copy with header ``name`` set to ``value`` (replacing any previous value)."""
        return replace(self, headers=(*self.without_header(name).headers, (name, value)))

    def without_header(self, name: str) -> Request:
        """A copy without header ``name``."""
        wanted = name.lower()
        kept = tuple((k, v) for k, v in self.headers if k.lower() != wanted)
        return replace(self, headers=kept)

    def __repr__(self) -> str:
        names = ", ".join(k for k, _ in self.headers)
        size = "" if self.body is None else f" body={len(self.body)}B"
        return f"<Request {self.method} {safe_url(self.url)} headers=[{names}]{size}>"


@dataclass(frozen=True)
class Response:
    """A response whose body, if any was wanted, has been read completely."""

    status: int
    url: yarl.URL
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)

    @classmethod
    def build(
        cls, status: int, url: yarl.URL, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> Response:
        """A response from any iterable of header pairs."""
        return cls(status, url, tuple(headers), body)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [v for k, v in self.headers if k.lower() == wanted]

    def __repr__(self) -> str:
        return f"<Response {self.status} {safe_url(self.url)}>"
