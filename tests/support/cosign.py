"""Test helpers for what `--sign-key` publishes: a P-256 key pair made by openssl, a
tampering registry's move (one `.sig` tag replaced by the same signature over other bytes), and
the npm Sigstore verifier of tests/sigstore, installed when it can be, else a skip saying why.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from containerdisks import oci

#: The npm project of the independent Sigstore bundle check (package.json, package-lock.json).
SIGSTORE = Path(__file__).resolve().parents[1] / "sigstore"


def keypair(directory: Path, name: str = "cosign", passphrase: str | None = None) -> Path:
    """A P-256 PKCS#8 PEM private key (encrypted with `passphrase`) and `<name>.pub` beside."""
    key = directory / f"{name}.key"
    enc = ["-aes-256-cbc", "-pass", f"pass:{passphrase}"] if passphrase else []
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         *enc, "-out", str(key)],
        check=True, capture_output=True,
    )  # fmt: skip
    passin = ["-passin", f"pass:{passphrase}"] if passphrase else []
    subprocess.run(
        ["openssl", "pkey", "-in", str(key), *passin, "-pubout",
         "-out", str(key.with_suffix(".pub"))],
        check=True, capture_output=True,
    )  # fmt: skip
    return key


def replace_sig_payload(
    host: str, repo: str, digest: str, change: Callable[[bytes], bytes]
) -> tuple[bytes, dict[str, Any]]:
    """Rewrite `digest`'s `.sig` tag in `repo` so its first layer is `change(payload)`, the
    signature annotation kept (a registry serving other bytes under the tag): the manifest the
    tag named before (to put back with `put_sig`), and the new one."""

    async def put() -> tuple[bytes, dict[str, Any]]:
        tag = f"{digest.replace(':', '-')}.sig"
        async with oci.RegistryClient(host) as client:
            before = (await client.get_manifest(repo, tag)).data
            sig = json.loads(before)
            layer = sig["layers"][0]
            payload = await client.get_blob(repo, layer["digest"], max_size=1 << 20)
            new = await client.put_blob(repo, change(payload))
            layer["digest"], layer["size"] = new.digest, new.size
            await client.put_manifest(repo, tag, sig["mediaType"], json.dumps(sig).encode())
        return before, sig

    return asyncio.run(put())


def put_sig(host: str, repo: str, digest: str, manifest: bytes) -> None:
    """Make `digest`'s `.sig` tag in `repo` name `manifest` (an OCI image manifest) again."""

    async def put() -> None:
        tag = f"{digest.replace(':', '-')}.sig"
        media = json.loads(manifest)["mediaType"]
        async with oci.RegistryClient(host) as client:
            await client.put_manifest(repo, tag, media, manifest)

    asyncio.run(put())


#: Why `npm ci` failed, by project directory, in this test session.
_NPM_FAILED: dict[Path, str] = {}


def sigstore_verifier(directory: Path = SIGSTORE, *, timeout: float = 300) -> Path:
    """`directory/verify.js`, runnable: node is there and `@sigstore/verify` is installed (by
    `npm ci` here when `.ci/run` has not). A machine where that cannot be (no node, no npm, no
    npm registry) skips the test with the reason; where npm works, the test runs."""
    if shutil.which("node") is None:
        pytest.skip("node is absent: the npm Sigstore verifier cannot run here")
    if not (directory / "node_modules" / "@sigstore" / "verify").is_dir():
        why = _NPM_FAILED.get(directory) or _npm_ci(directory, timeout)
        if why is not None:
            _NPM_FAILED[directory] = why  # one try per test session, not one per test
            pytest.skip(
                f"{directory}/node_modules is absent and `npm ci` failed ({why}): the npm "
                "Sigstore verifier cannot run here"
            )
    return directory / "verify.js"


def _npm_ci(directory: Path, timeout: float) -> str | None:
    """Why `npm ci` in `directory` failed (its last error line), or None when it worked."""
    if shutil.which("npm") is None:
        return "npm is absent"
    try:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=directory, timeout=timeout,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        shutil.rmtree(directory / "node_modules", ignore_errors=True)
        return f"no answer within {timeout:g} s"
    if done.returncode == 0 and (directory / "node_modules" / "@sigstore" / "verify").is_dir():
        return None
    shutil.rmtree(directory / "node_modules", ignore_errors=True)  # never half an install
    lines = [line.removeprefix("npm error ").strip() for line in done.stderr.splitlines()]
    lines = [line for line in lines if line]
    said = next((x for x in lines if "reason:" in x), next(iter(lines), "no message"))
    return f"exit {done.returncode}: {said}"[:300]
