"""Signals and kills landing mid-upload, made deterministic by the proxy holding the upload.

- SIGINT / SIGTERM: the open upload is cancelled (DELETE), no tag is written, no spool file is
  left, and the exit status is 130 / 143.
- SIGKILL: nothing can clean up; the next run completes the work, and the proxy's log shows that
  no tag was written before all of the entry's blobs and manifests, and moving tags last.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import clean_env, command, push
from tests.support.fault_proxy import FaultProxy, Logged, Rule

_DIGEST = re.compile(r"/manifests/sha256:[0-9a-f]{64}$")


def start_held(srv: Any, proxy: FaultProxy, cwd: Path) -> subprocess.Popen[str]:
    proxy.add(Rule("*", r"/v2/cd/fedora/blobs/uploads/.+", "hold", times=1))
    proc = subprocess.Popen(
        command(srv, f"{proxy.host}/cd", "--focus", "fedora:40", cwd=cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=cwd,
    )
    assert proxy.wait_held(60), "the upload never reached the proxy"
    return proc


def tag_writes(log: list[Logged]) -> list[str]:
    return [
        e.path.rsplit("/", 1)[1]
        for e in log
        if e.method == "PUT" and "/manifests/" in e.path and not _DIGEST.search(e.path)
    ]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_upload_cancels_it(
    tmp_path: Path, registry: Any, fedora: Any, sig: signal.Signals, status: int
) -> None:
    srv, _ = fedora
    with FaultProxy(registry.url) as proxy:
        proc = start_held(srv, proxy, tmp_path)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        proxy.release()
        log = proxy.log
    assert status == proc.returncode, err
    assert "Traceback" not in err
    assert [] == tag_writes(log)
    assert any(e.method == "DELETE" and "/blobs/uploads/" in e.path for e in log)
    work = tmp_path / "work"
    assert not work.exists() or [] == list(work.iterdir())


def test_sigkill_mid_upload_then_rerun_completes_in_order(
    tmp_path: Path, registry: Any, fedora: Any
) -> None:
    srv, _ = fedora
    with FaultProxy(registry.url) as proxy:
        proc = start_held(srv, proxy, tmp_path)
        proc.kill()
        proc.communicate(timeout=30)
        proxy.release()
        proxy.clear_rules()
        assert [] == tag_writes(proxy.log)
        before = len(proxy.log)
        result = push(srv, f"{proxy.host}/cd", "--focus", "fedora:40", cwd=tmp_path)
        log = proxy.log[before:]
    assert 0 == result.returncode, result.stderr
    writes = [e for e in log if e.method in ("PUT", "PATCH", "POST")]
    tags = tag_writes(writes)
    assert tags[1:] == ["40-1.14", "40", "latest"]
    assert re.fullmatch(r"40-\d{10}", tags[0])
    first_tag = next(
        i for i, e in enumerate(writes) if "/manifests/" in e.path and not _DIGEST.search(e.path)
    )
    # Every blob upload and every manifest by digest finished before the first tag was written.
    for e in writes[:first_tag]:
        assert e.ended <= writes[first_tag].started
    assert all("/manifests/" in e.path and not _DIGEST.search(e.path) for e in writes[first_tag:])
    assert {"blobs", "manifests"} <= {e.path.split("/")[4] for e in writes[:first_tag]}
