"""The pinned keys and real signed upstream files verify with gpgv, and one changed byte fails.

Real data (tests/fixtures/signed/SOURCES.md): Ubuntu's detached SHA256SUMS.gpg (UEC key, whose
only binding is SHA-1), Fedora's clearsigned CHECKSUM, openSUSE's v3 `.sha256.asc`, and the
openSUSE key copy that had expired: gpgv exits 0 for it, and it is refused all the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from containerdisks import openpgp

SIGNED = Path(__file__).resolve().parent.parent / "fixtures" / "signed"
UBUNTU = SIGNED / "ubuntu-22.04-release"
FEDORA = SIGNED / "fedora-42-server" / "Fedora-Server-42-1.1-x86_64-CHECKSUM"
SUSE = SIGNED / "opensuse-tumbleweed-cloud" / "openSUSE-Tumbleweed-Minimal-VM.x86_64-Cloud.qcow2"

CASES = [
    ("ubuntu", UBUNTU / "SHA256SUMS", UBUNTU / "SHA256SUMS.gpg", "2026-07-22T19:16:08Z"),
    ("fedora-42", FEDORA, None, "2025-04-11T11:23:43Z"),
    ("opensuse", Path(f"{SUSE}.sha256"), Path(f"{SUSE}.sha256.asc"), "2026-07-18T11:04:48Z"),
]
FPR = {
    "ubuntu": "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81",
    "fedora-42": "B0F4950458F69E1150C6C5EDC8AC4916105EF944",
    "opensuse": "AD485664E901B867051AB15F35A2F86E29B700A4",
}


FEDORA_DATA = FEDORA.read_bytes()
SUSE_DATA = Path(f"{SUSE}.sha256").read_bytes()
SUSE_SIG = Path(f"{SUSE}.sha256.asc").read_bytes()


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


@pytest.mark.parametrize(("ring", "data", "sig", "when"), CASES, ids=[c[0] for c in CASES])
async def test_real_signature_verifies(ring: str, data: Path, sig: Path | None, when: str) -> None:
    signed, signature = await asyncio.to_thread(lambda: (data.read_bytes(), _read(sig)))
    verified = await openpgp.verify(openpgp.Keyrings.pinned().get(ring), signed, signature)
    assert (FPR[ring], when) == (verified.fingerprint, verified.signed_at)
    if sig is None:  # clearsigned: the signed text only, no armour
        assert verified.data.startswith(b"# Fedora-Server-Guest-Generic-42-1.1.x86_64.qcow2")
        assert b"PGP" not in verified.data


@pytest.mark.parametrize(("ring", "data", "sig", "when"), CASES, ids=[c[0] for c in CASES])
async def test_one_changed_byte_fails(ring: str, data: Path, sig: Path | None, when: str) -> None:
    changed = bytearray(await asyncio.to_thread(data.read_bytes))
    at = re.search(rb"[0-9a-f]{64}", changed).start()  # type: ignore[union-attr]  # a digest
    changed[at] ^= 0x01
    with pytest.raises(openpgp.SignatureError, match="BADSIG"):
        await openpgp.verify(openpgp.Keyrings.pinned().get(ring), bytes(changed), _read(sig))


async def test_another_distributions_key_does_not_vouch() -> None:
    with pytest.raises(openpgp.SignatureError, match="NO_PUBKEY C8AC4916105EF944"):
        await openpgp.verify(openpgp.Keyrings.pinned().get("fedora-43"), FEDORA_DATA)


async def test_expired_key_copy_is_refused_although_gpgv_exits_0() -> None:
    old = SIGNED / "opensuse-2022-copy-expiring-2026-06-19.asc"
    ring = openpgp.Keyrings([openpgp.PinnedKey("suse", FPR["opensuse"], old)]).get("suse")
    data, sig = SUSE_DATA, SUSE_SIG
    result = await openpgp.run_gpgv(ring.material(), data, sig)
    assert 0 == result.returncode
    with pytest.raises(openpgp.SignatureError, match=f"EXPKEYSIG: pinned key {FPR['opensuse']}"):
        openpgp.judge(result, ring)


async def test_a_pinned_key_past_its_listed_expiry_is_an_error_naming_it() -> None:
    ring = openpgp.Keyrings.pinned().get("opensuse")
    data, sig = SUSE_DATA, SUSE_SIG
    with pytest.raises(openpgp.SignatureError, match=r"pinned key AD48.* expired on 2030-05-27"):
        await openpgp.verify(ring, data, sig, today=dt.date(2030, 5, 28))


def test_pinned_keys_hold_exactly_their_manifest_fingerprints(tmp_path: Path) -> None:
    """Every manifest key: its file holds that primary key and no other, with that expiry."""
    manifest = tomllib.loads((openpgp.KEYS_DIR / "manifest.toml").read_text())
    assert manifest["key"]
    for key in manifest["key"]:
        out = subprocess.run(
            ["gpg", "--homedir", str(tmp_path), "--show-keys", "--with-colons"],
            input=(openpgp.KEYS_DIR / key["file"]).read_bytes(),
            capture_output=True,
            check=True,
        ).stdout.decode()
        records = [line.split(":") for line in out.splitlines()]
        pubs = [i for i, r in enumerate(records) if r[0] == "pub"]
        assert 1 == len(pubs), key["file"]
        primary = next(r[9] for r in records[pubs[0] :] if r[0] == "fpr")
        assert key["fingerprint"] == primary
        expiry = records[pubs[0]][6]
        listed = key["expires"]
        assert listed == (
            "never"
            if not expiry
            else dt.datetime.fromtimestamp(int(expiry), dt.UTC).date().isoformat()
        )
        if listed != "never":
            assert dt.date.fromisoformat(listed) > dt.datetime.now(dt.UTC).date(), key["file"]
