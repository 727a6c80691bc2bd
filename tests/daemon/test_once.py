"""`serve --once`: exactly one pass through the daemon's scheduler, with the exit statuses
of docs/cli.md.

0 all good (results file written, plan on stdout); 1 when an entry failed, 0 with `--no-fail`;
2 for a focus that matches nothing; dry run is the default, and publishes and writes nothing;
a signal ends the one-shot run with 130/143 after cleanup, like `images push`.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.daemon.conftest import Fedora, serve_command
from tests.support.cli import clean_env
from tests.support.disks import fedora_link
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.registry import Registry


def once(
    fedora_upstream: Fedora, target: str, cwd: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    srv, _, _ = fedora_upstream
    return subprocess.run(
        [*serve_command(srv, target, cwd, "--once", *flags)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(CONTAINERDISKS_RETRIES="1"),
        cwd=cwd,
    )


def test_once_publishes_writes_results_and_exits_0(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    result = once(fedora_upstream, f"{registry.host}/cd", tmp_path)
    assert 0 == result.returncode, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"fedora:40", "fedora:39", "fedora:41-beta"} == set(results)
    assert ["fedora:40-1.14", "fedora:40", "fedora:latest"] == results["fedora:40"]["Tags"][1:]
    # The digest the tags were written at, which verify boots and promote copies.
    index = registry.inspect_raw("cd/fedora", "40")
    assert f"sha256:{hashlib.sha256(index).hexdigest()}" == results["fedora:40"]["Digest"]
    # The outcome: per entry and arch what happened, the digest and the tags that moved.
    rows = {tuple(line.split()[:2]): line.split(None, 4) for line in result.stdout.splitlines()}
    assert ["ENTRY", "ARCH", "OUTCOME", "DIGEST", "TAGS"] == rows["ENTRY", "ARCH"]
    tags = ", ".join(t.partition(":")[2] for t in results["fedora:40"]["Tags"])
    digest = results["fedora:40"]["Digest"].removeprefix("sha256:")[:12]
    assert ["fedora:40", "x86_64", "published", digest, tags] == rows["fedora:40", "x86_64"]
    assert {"40", "39", "latest"} <= set(registry.list_tags("cd/fedora"))
    assert [] == [e for e in result.stderr.splitlines() if not e.startswith("{")]
    # A second pass in a new process finds everything up to date: no key in the results.
    again = once(fedora_upstream, f"{registry.host}/cd", tmp_path)
    assert 0 == again.returncode, again.stderr
    assert {} == json.loads((tmp_path / "results.json").read_text())


@pytest.mark.parametrize(("flags", "status"), [((), 1), (("--no-fail",), 0)])
def test_once_with_a_failed_entry(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora, flags: tuple[str, ...], status: int
) -> None:
    srv, _, _ = fedora_upstream
    srv.respond(fedora_link("39", "x86_64"), 404, times=None)
    result = once(fedora_upstream, f"{registry.host}/cd", tmp_path, *flags)
    assert status == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert "404" in results["fedora:39"]["Err"]
    assert "Tags" in results["fedora:40"]
    assert "fedora:39" in result.stdout  # the plan, as images push prints it


def test_once_focus_matching_nothing_is_a_usage_error(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    result = once(fedora_upstream, f"{registry.host}/cd", tmp_path, "--focus", "fedora:99")
    assert 2 == result.returncode
    assert ["containerdisks: focus 'fedora:99' matches no catalog entry"] == [
        line for line in result.stderr.splitlines() if not line.startswith("{")
    ]


def test_once_focus_union_publishes_exactly_its_entries_and_names_a_term_matching_nothing(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    """`--focus` repeated and comma-separated is a union, checked term by term after discovery
    (a discovering source's version is known only then)."""
    target = f"{registry.host}/cd"
    result = once(fedora_upstream, target, tmp_path, "--focus", "fedora:40", "--focus=fedora:39,")
    assert 0 == result.returncode, result.stderr
    assert {"fedora:40", "fedora:39"} == set(json.loads((tmp_path / "results.json").read_text()))
    bad = once(fedora_upstream, target, tmp_path, "--focus", "fedora:40,fedora:99")
    assert 2 == bad.returncode
    assert ["containerdisks: focus 'fedora:99' matches no catalog entry"] == [
        line for line in bad.stderr.splitlines() if not line.startswith("{")
    ]


def test_dry_run_is_the_default_and_publishes_and_writes_nothing(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    srv, _, _ = fedora_upstream
    command = serve_command(srv, f"{registry.host}/cd", tmp_path, "--once")
    command.remove("--dry-run=false")
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=tmp_path
    )
    assert 0 == result.returncode, result.stderr
    assert not (tmp_path / "results.json").exists()
    assert not (tmp_path / "work").exists()
    assert "build" in result.stdout
    with pytest.raises(RuntimeError):
        registry.list_tags("cd/fedora")


def test_once_sigterm_mid_upload_exits_143_after_cleanup(
    tmp_path: Path, registry: Registry, fedora_upstream: Fedora
) -> None:
    srv, _, _ = fedora_upstream
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule("PATCH", r"/v2/cd/fedora/blobs/uploads/", "hold", times=1))
        proc = subprocess.Popen(
            serve_command(srv, f"{proxy.host}/cd", tmp_path, "--once"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=tmp_path,
        )
        assert proxy.wait_held(60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        proxy.release()
        log = proxy.log
    assert 143 == proc.returncode, err
    assert any(e.method == "DELETE" and "/blobs/uploads/" in e.path for e in log)
    assert [] == registry.upload_dirs("cd/fedora")
