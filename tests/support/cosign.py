"""Test helpers for what `--sign-key` publishes: a P-256 key pair made by openssl, and a
tampering registry's move (one `.sig` tag replaced by the same signature over other bytes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from containerdisks import oci


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
