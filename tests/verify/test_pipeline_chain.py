"""medius's pipeline through one results file, every step a real process: `images push` of
real images from a loopback upstream into a real staging registry, `images verify --local`
(or `images verify` through the fake KubeVirt API, whose VMs are the same real qemu guests)
boots them, `images promote` copies what booted into a second real registry, and skopeo reads
the promoted tags back."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import clean_env
from tests.support.fake_kube import FakeKube
from tests.support.registry import start_registry
from tests.verify.conftest import Published
from tests.verify.test_verify_kube import _verify as verify_in_kubevirt
from tests.verify.test_verify_kube import fake  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(400)


def test_push_verify_promote_promotes_only_what_booted(
    tmp_path: Path, published: Published
) -> None:
    published.push("tiny:1")
    pushed = published.push("tiny-ignores:1")
    verified = published.verify("--dry-run=false")
    assert 1 == verified.returncode, verified.stderr  # tiny-ignores refuses the key
    after_verify = published.read_results()
    assert after_verify["tiny:1"]["Stage"] == "verify"
    assert "Err" not in after_verify["tiny:1"]
    assert "Err" in after_verify["tiny-ignores:1"]

    _promote_and_check(tmp_path, published, pushed, after_verify)


def test_push_verify_in_kubevirt_promote(
    tmp_path: Path,
    published: Published,
    fake: FakeKube,  # noqa: F811
) -> None:
    pushed = published.push("tiny:1")
    verified = verify_in_kubevirt(published, fake, "--dry-run=false")
    assert 0 == verified.returncode, verified.stderr
    after_verify = published.read_results()
    assert after_verify["tiny:1"]["Stage"] == "verify"
    assert "Err" not in after_verify["tiny:1"]
    assert len(fake.created) == len(fake.deletes) == 1
    _promote_and_check(tmp_path, published, pushed, after_verify)


def _promote_and_check(
    tmp_path: Path, published: Published, pushed: dict[str, Any], after_verify: dict[str, Any]
) -> None:
    with start_registry(tmp_path / "release") as release:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "containerdisks",
                "images",
                "promote",
                "--dry-run=false",
                "--source-registry",
                published.target,
                "--target-registry",
                f"{release.host}/containerdisks",
                "--results-file",
                str(published.results),
                "--log-format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
            cwd=published.root,
        )
        # an entry that failed verify (tiny-ignores, where it ran) is not promoted, and the run
        # exits 1 for that earlier failure, as medius does (--no-fail makes it 0)
        failed = sorted(k for k, r in after_verify.items() if "Err" in r)
        assert (1 if failed else 0) == done.returncode, done.stderr
        for key in failed:
            assert f'"entries": "{key} (verify)"' in done.stderr
        results = published.read_results()
        tiny = results["tiny:1"]
        assert {"Tags": pushed["tiny:1"]["Tags"], "Stage": "promote"} == {
            k: tiny[k] for k in ("Tags", "Stage")
        }
        assert tiny["Digest"] == after_verify["tiny:1"]["Digest"]
        # Every tag push wrote, in the release registry, at the digest verify booted.
        for tag in tiny["Tags"]:
            ref = tag.split(":", 1)[1]
            raw = release.inspect_raw("containerdisks/tiny", ref)
            assert "sha256:" + hashlib.sha256(raw).hexdigest() == tiny["Digest"], tag
        # What failed verify stays where it was and is not in the release registry.
        for key, record in after_verify.items():
            if key != "tiny:1":
                assert results[key] == record
        with urllib.request.urlopen(f"{release.url}/v2/_catalog", timeout=10) as answer:
            assert json.load(answer)["repositories"] == ["containerdisks/tiny"]
