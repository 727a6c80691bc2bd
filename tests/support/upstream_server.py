"""A loopback stand-in for the distributions' download servers, reached through the mirror table.

One job: serve a directory tree laid out as `<root>/<host>/<path>` over HTTP on 127.0.0.1, so that
the real `HttpUpstream` (or a `containerdisks` subprocess) fetches the real upstream files with
`--upstream-mirror https://<host>/=http://127.0.0.1:<port>/<host>/`, and record every request.

Decisions that shaped it:
- Files are served by aiohttp's own static handler, so Range, ETag, Last-Modified and the
  conditional requests (304) behave as a real web server's, not as a hand-written imitation.
- Every request is recorded (method, path, query, headers, status), so tests can assert "no image
  was downloaded" or "one request per checksum file per pass".
- A path can be given a canned answer (`respond`): an error status a number of times, a redirect,
  or a body. That is enough for 404/5xx/429 and redirect tests without a second server.
- A path can be given a streamed body (`respond_stream`): any async generator of chunks, with
  an optional announced `Content-Length` that need not be true. That is how a test plays a
  hostile server: an endless body, a 100 TiB Content-Length, one byte per second.
- The same object runs in the test's event loop (`async with`) or in a background thread with its
  own loop (`with`), for tests that start the command line as a subprocess
  (`tests.support.loopback`).
- `lay_out_upstream` copies the real fixture files (tests/fixtures/upstream, see SOURCES.md) to
  the paths of the canonical URLs they were taken from; `put` adds any other file (an image).
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.support.loopback import LoopbackServer

__all__ = [
    "DEFAULT_FIXTURES",
    "FIXTURES_DIR",
    "FIXTURE_URLS",
    "CannedResponse",
    "RecordedRequest",
    "UpstreamServer",
    "lay_out_upstream",
    "put",
    "tree_path",
    "via",
]

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "upstream"

_ALMA = "https://repo.almalinux.org/almalinux/{v}/cloud/{a}/images/CHECKSUM"
_CENTOS = "https://cloud.centos.org/centos/{v}-stream/{a}/images/CHECKSUM"
_DEBIAN = "https://cloud.debian.org/images/cloud/{c}/latest/debian-{v}-genericcloud-{a}.json"
_LEAP = "https://download.opensuse.org/distribution/leap/{v}/appliances/{f}"
_TW = "https://download.opensuse.org/tumbleweed/appliances/SHA256SUMS"
_TW_Z = "https://download.opensuse.org/ports/zsystems/tumbleweed/appliances/SHA256SUMS"
_ARCHES = ("x86_64", "aarch64", "s390x")

#: Fixture file (relative to FIXTURES_DIR) -> the canonical URL it is a copy of (SOURCES.md).
FIXTURE_URLS: Mapping[str, str] = {
    **{
        f"almalinux/almalinux{v}-{a}.checksum": _ALMA.format(v=v, a=a)
        for v in ("9", "10")
        for a in _ARCHES
    },
    **{
        f"centos-stream/centos-stream{v}-{a}.checksum": _CENTOS.format(v=v, a=a)
        for v in ("9", "10")
        for a in _ARCHES
    },
    **{
        f"debian/debian-{v}-genericcloud-{a}.json": _DEBIAN.format(c=c, v=v, a=a)
        for v, c in (("11", "bullseye"), ("12", "bookworm"), ("13", "trixie"))
        for a in ("amd64", "arm64")
    },
    "fedora/releases.json": "https://getfedora.org/releases.json",
    **{
        f"opensuse-leap/{f}": _LEAP.format(v=v, f=f)
        for v, f in (
            ("15.5", "openSUSE-Leap-15.5-Minimal-VM.x86_64-Cloud.qcow2.sha256"),
            ("15.5", "openSUSE-Leap-15.5-Minimal-VM.aarch64-Cloud.qcow2.sha256"),
            ("15.6", "openSUSE-Leap-15.6-Minimal-VM.x86_64-Cloud.qcow2.sha256"),
            ("15.6", "openSUSE-Leap-15.6-Minimal-VM.aarch64-Cloud.qcow2.sha256"),
            ("16.0", "Leap-16.0-Minimal-VM.x86_64-Cloud.qcow2.sha256"),
            ("16.0", "Leap-16.0-Minimal-VM.aarch64-Cloud.qcow2.sha256"),
            ("16.0", "Leap-16.0-Minimal-VM.s390x-s390x-Cloud.qcow2.sha256"),
        )
    },
    # MicroOS and Tumbleweed are two snapshots of the same two files.
    "opensuse-microos/microos.SHA256SUM": _TW,
    "opensuse-microos/microos-s390x.SHA256SUM": _TW_Z,
    "opensuse-tumbleweed/tumbleweed.SHA256SUM": _TW,
    "opensuse-tumbleweed/tumbleweed-s390x.SHA256SUM": _TW_Z,
    "ubuntu/SHA256SUM": "https://cloud-images.ubuntu.com/releases/22.04/release/SHA256SUMS",
    "hashsum/bsd.checksum": "https://cloud.centos.org/centos/8/x86_64/images/CHECKSUM",
    "hashsum/gnu.checksum": (
        "https://mirror.openshift.com/pub/openshift-v4/dependencies/rhcos/4.9/latest/sha256sum.txt"
    ),
    # The 2021-11 9-stream x86_64 CHECKSUM with wget output appended.
    "hashsum/broken.checksum": _CENTOS.format(v="9", a="x86_64"),
}

#: Every fixture whose URL no other fixture of the set claims: the newest openSUSE snapshot
#: (MicroOS, 2026) and the clean CentOS Stream 9 file.
DEFAULT_FIXTURES: tuple[str, ...] = tuple(
    k
    for k in FIXTURE_URLS
    if not k.startswith("opensuse-tumbleweed/") and k != "hashsum/broken.checksum"
)


def tree_path(root: Path, url: str) -> Path:
    """Where the file of canonical `url` lives in a tree served by `UpstreamServer`."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.path.startswith("/") or parts.path.endswith("/"):
        raise ValueError(f"{url!r} does not name a file on a host")
    rel = Path(parts.hostname + parts.path)
    if ".." in rel.parts:
        raise ValueError(f"{url!r} escapes the tree")
    return root / rel


def via(canonical: str) -> str:
    """A placeholder for the mirror note of an HTTP failure of `canonical`, for expectations
    written before the server (and its port) exists; `UpstreamServer.resolve_notes` fills it."""
    return f"<mirror {canonical}>"


def put(root: Path, url: str, data: bytes | str | Path) -> Path:
    """Place `data` (bytes, text, or a file to copy) at canonical `url` in the tree."""
    dest = tree_path(root, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Path):
        shutil.copyfile(data, dest)
    elif isinstance(data, str):
        dest.write_text(data, encoding="utf-8")
    else:
        dest.write_bytes(data)
    return dest


def lay_out_upstream(root: Path, fixtures: Iterable[str] = DEFAULT_FIXTURES) -> Path:
    """Copy fixture files to the paths of their canonical URLs under `root`; return `root`."""
    claimed: dict[str, str] = {}
    for name in fixtures:
        url = FIXTURE_URLS[name]
        if url in claimed:
            raise ValueError(f"{name} and {claimed[url]} are both {url}")
        claimed[url] = name
        put(root, url, FIXTURES_DIR / name)
    return root


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (the path is the mirrored one: /<host>/<path>)."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    status: int


@dataclass
class CannedResponse:
    """A fixed answer for one path, used `times` times (None: for ever), then the file again."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    times: int | None = 1


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Makes the chunks of a streamed answer, afresh for each request.
BodyFactory = Callable[[], AsyncIterator[bytes]]


@dataclass
class _Streamed:
    body: BodyFactory
    content_length: int | None


class UpstreamServer(LoopbackServer):
    """Serve `root` on 127.0.0.1 and record the requests.

    `async with UpstreamServer(root) as srv:` in async tests; `with UpstreamServer(root) as srv:`
    runs it in a background thread (for subprocess tests). `srv.mirrors()` is a mirror table
    sending every https URL here; `srv.mirror_args()` the same as command-line flags.
    """

    name = "upstream-server"

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(bind=host, port=port)
        self.root = Path(root)
        self.host = host
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._canned: dict[str, CannedResponse] = {}
        self._streamed: dict[str, _Streamed] = {}

    # -- the app (served by LoopbackServer) ---------------------------------------------------

    async def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._on_prepare)
        self.root.mkdir(parents=True, exist_ok=True)
        app.router.add_static("/", self.root, show_index=False, follow_symlinks=False)
        return app

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self.running:
            raise RuntimeError("the upstream server is not running")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def url_for(self, canonical: str) -> str:
        """The local URL that serves canonical `canonical`."""
        parts = urlsplit(canonical)
        return f"{self.base_url}{parts.hostname}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )

    def mirrors(self, hosts: Iterable[str] | None = None) -> dict[str, str]:
        """The mirror table for `upstream.Mirrors` / `--upstream-mirror`.

        With `hosts`: `{"https://<host>/": "http://127.0.0.1:<port>/<host>/"}` for each, as a user
        would configure it. Without: the catch-all `{"https://": "http://127.0.0.1:<port>/"}`,
        which sends every canonical URL here (a file missing from the tree is a 404), so a test
        can never reach the internet by accident.
        """
        if hosts is None:
            return {"https://": self.base_url}
        return {f"https://{h}/": f"{self.base_url}{h}/" for h in hosts}

    def mirror_note(self, canonical: str) -> str:
        """What an HTTP failure of `canonical`, asked through this server, ends with (also
        once the server stopped: the port it had)."""
        parts = urlsplit(canonical)
        return f" (mirror http://{self.host}:{self._port}/{parts.hostname}{parts.path})"

    def resolve_notes(self, text: str) -> str:
        """`text` with every `via(url)` placeholder replaced by this server's `mirror_note`."""
        return re.sub(r"<mirror ([^>]+)>", lambda m: self.mirror_note(m[1]), text)

    def mirror_args(self, hosts: Iterable[str] | None = None) -> list[str]:
        """The same table as `--upstream-mirror FROM=TO` flags."""
        out: list[str] = []
        for src, dst in self.mirrors(hosts).items():
            out += ["--upstream-mirror", f"{src}={dst}"]
        return out

    # -- canned answers -----------------------------------------------------------------------

    def respond(
        self,
        where: str,
        status: int,
        *,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
        times: int | None = 1,
    ) -> None:
        """Answer requests for `where` (a canonical URL or a server path) with `status`, `times`
        times (None: until `clear_responses`). For a redirect pass `headers={"Location": ...}`."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._canned[self._path(where)] = CannedResponse(
                status, data, dict(headers or {}), times
            )

    def respond_stream(
        self, where: str, body: BodyFactory, *, content_length: int | None = None
    ) -> None:
        """Answer every GET of `where` with 200 and the chunks `body()` yields, announcing
        `content_length` (None: chunked). The connection is dropped when `body` ends early."""
        with self._lock:
            self._streamed[self._path(where)] = _Streamed(body, content_length)

    def clear_responses(self) -> None:
        with self._lock:
            self._canned.clear()
            self._streamed.clear()

    # -- the request log ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests recorded so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count(self, where: str | None = None, *, method: str | None = None) -> int:
        """How many requests asked for `where` (a canonical URL or server path; None: any)."""
        path = None if where is None else self._path(where)
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method)
        )

    def paths(self, *, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _path(where: str) -> str:
        if where.startswith(("http://", "https://")):
            parts = urlsplit(where)
            return f"/{parts.hostname}{parts.path}"
        return where if where.startswith("/") else "/" + where

    def _take_canned(self, path: str) -> CannedResponse | None:
        with self._lock:
            canned = self._canned.get(path)
            if canned is None:
                return None
            if canned.times is not None:
                canned.times -= 1
                if canned.times <= 0:
                    del self._canned[path]
            return canned

    def _record(self, request: web.Request, status: int) -> None:
        entry = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            status=status,
        )
        with self._lock:
            self._requests.append(entry)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        canned = self._take_canned(request.path)
        if canned is not None:
            return web.Response(status=canned.status, body=canned.body, headers=canned.headers)
        with self._lock:
            streamed = self._streamed.get(request.path)
        if streamed is not None:
            return await self._stream(request, streamed)
        return await handler(request)

    @staticmethod
    async def _stream(request: web.Request, streamed: _Streamed) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        if streamed.content_length is not None:
            response.content_length = streamed.content_length
        await response.prepare(request)
        sent = 0
        try:
            async for chunk in streamed.body():
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:  # the client hung up: what a hostile body is for
            return response
        if streamed.content_length is not None and sent < streamed.content_length:
            if request.transport is not None:  # the body ended early: say so by dropping
                request.transport.abort()
            return response
        await response.write_eof()
        return response

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        # Recorded when the headers go out: only then is a file response's status final
        # (200, 206 for a Range, 304 for a matching validator).
        self._record(request, response.status)
