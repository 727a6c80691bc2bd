"""Each output boundary masks a registered secret by itself, whatever string carries it.

The end-to-end tests (test_no_secret_leaves.py) send secrets through the registry client, whose
errors are masked when they are made; here each boundary gets the secret in a string nothing
masked before: a log event (also inside an object's `repr`, and JSON-escaped), the results
file, the server's JSON and metrics text, the command line's one-line error, and stdout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest
import structlog

from containerdisks import cli, log
from containerdisks.engine.results import Result, write_results
from containerdisks.metrics import Metrics
from containerdisks.oci.redact import MASK, register
from containerdisks.server import serving
from containerdisks.status import Status

#: a quote and a backslash: JSON escapes them, so a mask applied after rendering would miss it
SECRET = 'hunter2 "and\\ more'
ESCAPED = json.dumps(SECRET)[1:-1]


@pytest.fixture(autouse=True)
def _registered() -> None:
    register(SECRET)


def assert_masked(text: str) -> None:
    assert SECRET not in text
    assert ESCAPED not in text
    assert "hunter2" not in text
    assert MASK in text


class Holder:
    """An object that shows the secret in its repr (the JSON renderer falls back to repr)."""

    def __repr__(self) -> str:
        return "Holder(hunter2)"


def test_log_events_at_any_level_in_json_and_console() -> None:
    register("hunter2")
    for fmt in ("json", "console"):
        out = io.StringIO()
        log.configure("debug", fmt, stream=out)  # type: ignore[arg-type]
        logger = structlog.get_logger("test")
        logger.debug("debugged", error=f"echo {SECRET}", nested={"k": [SECRET]})
        logger.error("failed", holder=Holder())
        try:
            raise ValueError(SECRET)
        except ValueError:
            logger.exception("crashed")
        text = out.getvalue()
        assert "debugged" in text
        assert "crashed" in text
        assert_masked(text)


def test_results_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_results(path, {"fedora:41": Result(error=f"HTTP 403: {SECRET}")})
    text = path.read_text()
    assert_masked(text)
    assert f"HTTP 403: {MASK}" == json.loads(text)["fedora:41"]["Err"]


async def test_status_and_metrics_over_http() -> None:
    status = Status(heartbeat_timeout=60, dry_run=False)
    entry = status.entry(f"fedora:{SECRET}")
    entry.error = f"denied: {SECRET}"
    metrics = Metrics()
    metrics.sync_finished(f"fedora:{SECRET}", "failed", 1.0, 0.0, 1)
    bodies = {}
    async with (
        serving(status, metrics, "127.0.0.1", 0) as addresses,
        aiohttp.ClientSession() as session,
    ):
        host, port = addresses[0]
        for path in ("/status", "/metrics"):
            async with session.get(f"http://{host}:{port}{path}") as response:
                assert 200 == response.status
                bodies[path] = await response.text()
    for body in bodies.values():
        assert_masked(body)
    assert f"denied: {MASK}" == json.loads(bodies["/status"])["entries"][f"fedora:{MASK}"]["error"]


def test_the_one_line_error_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / f"{SECRET}.yaml"
    assert 2 == cli.main(["catalog", "--config", str(missing)])
    _, err = capsys.readouterr()
    assert err.startswith("containerdisks: ")
    assert_masked(err)

    out = io.StringIO()
    stream = log.RedactingStream(out)
    print(f"a table row: {SECRET}", file=stream)  # type: ignore[arg-type]
    assert_masked(out.getvalue())


def test_an_unexpected_error_is_printed_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug's traceback is printed before the streams that mask secrets are taken down."""

    def bug(argv: object) -> int:
        raise RuntimeError(f"a bug that quotes {SECRET}")

    monkeypatch.setattr(cli, "_main", bug)
    assert 1 == cli.main(["catalog"])
    _, err = capsys.readouterr()
    assert "Traceback" in err
    assert f"RuntimeError: a bug that quotes {MASK}" in err
    assert_masked(err)
