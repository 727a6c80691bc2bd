"""The status page at `/`, loaded by headless Chromium from a real `serve` process.

Mid-pass (a one-byte-per-second loopback upstream holds one worker) the page shows the running
pass and entry next to the published ones; after that download fails its rate window, the
failure leads the table with its reason. Fedora's releases.json gains a release whose version is
`42 <script>...`: it is a hostile string upstream hands us and it reaches the page (as an entry the
daemon cannot publish); the DOM Chromium built has no script element and shows the text. A
screenshot is taken into the test's tmp_path (a PNG, kept as an artifact, not committed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.daemon.conftest import Daemon, Fedora, StartDaemon
from tests.daemon.test_slow_upstream import start_slow
from tests.support.disks import FEDORA_URL, fedora_link
from tests.support.registry import Registry
from tests.support.upstream_server import put

CHROMIUM = shutil.which("chromium")
HOSTILE = "<script>alert(1)</script>"
WINDOW = 6

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


class Dom(HTMLParser):
    """What a dumped DOM holds: its tags, its text, and the entry rows' data attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.rows: list[dict[str, str | None]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr" and any(k == "data-entry" for k, _ in attrs):
            self.rows.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all_text(self) -> str:
        return "".join(self.text)


def chromium(tmp_path: Path, url: str, *flags: str) -> str:
    """Headless Chromium on `url`; its stdout (the DOM with --dump-dom)."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1400,1000",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    return done.stdout


def dump(tmp_path: Path, daemon: Daemon) -> Dom:
    return Dom(chromium(tmp_path, f"http://127.0.0.1:{daemon.port}/", "--dump-dom"))


def test_the_page_in_chromium_mid_pass_and_after_a_failure_with_a_hostile_version(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, start_daemon: StartDaemon
) -> None:
    srv, _, root = fedora_upstream
    releases = json.loads((root / FEDORA_URL.removeprefix("https://")).read_text())
    link = fedora_link("40", "x86_64")
    forty = next(r for r in releases if r["link"] == link and r["arch"] == "x86_64")
    releases.append({**forty, "version": f"42 {HOSTILE}"})  # Fedora 42, says its first field
    put(root, FEDORA_URL, json.dumps(releases))
    daemon = start_slow(
        tmp_path, registry, srv, start_daemon, fedora_arches="x86_64", window=WINDOW, retries=1
    )

    def entries() -> dict[str, dict[str, object]]:
        code, body = daemon.get("/status")  # 0 until it listens
        return json.loads(body)["entries"] if code == 200 else {}  # type: ignore[no-any-return]

    # Mid-pass: fedora:40 published while slow:1 still downloads.
    daemon.wait_for(
        "fedora:40 published while slow:1 runs",
        lambda: (
            (e := entries()).get("fedora:40", {}).get("result") == "published"
            and e.get("slow:1", {}).get("state") == "running"
        ),
        timeout=60,
    )
    status = daemon.status()
    assert status["current_pass"] is not None
    assert status["last_pass"] is None
    dom = dump(tmp_path, daemon)
    text = dom.all_text()
    assert "running" in text
    assert "since " + status["current_pass"]["started"] in text
    rows = {(r["data-entry"], r["data-arch"]): r["data-outcome"] for r in dom.rows}
    assert "published" == rows[("fedora:40", "x86_64")]
    assert ("slow:1", "*") in rows  # running, not synced yet: no arches known
    assert "running" in text

    # After the failure: slow:1 failed in its window, the pass finished; failures lead.
    daemon.wait_for(
        "the pass to finish",
        lambda: daemon.status()["last_pass"] is not None,
        timeout=4 * WINDOW + 60,
    )
    status = daemon.status()
    slow = status["entries"]["slow:1"]
    assert "failed" == slow["result"]
    dom = dump(tmp_path, daemon)
    text = dom.all_text()
    failing = [r["data-entry"] for r in dom.rows if r["data-outcome"] == "failed"]
    assert "slow:1" in failing
    first_ok = next(i for i, r in enumerate(dom.rows) if r["data-outcome"] != "failed")
    assert all(r["data-outcome"] == "failed" for r in dom.rows[:first_ok])
    assert all(r["data-outcome"] != "failed" for r in dom.rows[first_ok:])
    rows = {(r["data-entry"], r["data-arch"]): r["data-outcome"] for r in dom.rows}
    assert "failed" == rows[("slow:1", "x86_64")]
    assert "published" == rows[("fedora:40", "x86_64")]
    assert "download slower than min_transfer_rate" in text
    assert status["last_pass"]["finished"] in text

    # The hostile version is an entry of the page, as text; the DOM runs nothing.
    hostile = [k for k in status["entries"] if HOSTILE in k]
    assert hostile, list(status["entries"])
    assert any(r["data-entry"] == hostile[0] for r in dom.rows)
    assert HOSTILE in text
    assert "script" not in dom.tags

    # The headers that keep it so, and a screenshot as the test's artifact.
    code, _ = daemon.get("/")
    assert 200 == code
    shot = tmp_path / "page.png"
    chromium(tmp_path, f"http://127.0.0.1:{daemon.port}/", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty canvas
