"""Upstream signatures through the real push: keys made here with gpg, a loopback upstream tree,
the real registry. Each case is accepted or refused as it should be, and a refusal is one line
naming the signed file and the status; nothing is published for a refused entry.

Keys: `good`, `expired` (made and used under `--faked-system-time` in 2020, valid one year) and
`revoked` (its own revocation certificate imported) are all pinned in the keyring `test` through
`upstream_keys`; `other` is not. gpgv exits 0 for the expired and revoked cases and for unsigned
lines around a clearsigned block, and 2 for an unknown co-signer: the verdict comes from its
status lines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.cli import clean_env
from tests.support.disks import make_qcow2, sha256
from tests.support.registry import Registry
from tests.support.upstream_server import UpstreamServer, put

BASE = "https://images.example/signed/"
SIGNED = Path(__file__).resolve().parent.parent / "fixtures" / "signed"
IMAGE = "disk-1.qcow2"


@dataclass
class Keys:
    home: Path
    fpr: dict[str, str]
    signing_home: Path | None = None  # a copy made before the revocation was imported

    def gpg(
        self, *args: str, faked: str | None = None, data: bytes | None = None, sign: bool = False
    ) -> bytes:
        extra = [f"--faked-system-time={faked}!"] if faked else []
        home = self.signing_home if sign and self.signing_home else self.home
        return subprocess.run(
            ["gpg", "--batch", "--homedir", str(home), "--passphrase", "", *extra, *args],
            input=data,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout

    def sign(self, who: str, data: bytes, *, clear: bool = False, also: str | None = None) -> bytes:
        faked = "20200601T000000" if who == "expired" else None
        users = ["--local-user", self.fpr[who]]
        if also is not None:
            users += ["--local-user", self.fpr[also]]
        mode = "--clearsign" if clear else "--detach-sign"
        return self.gpg(*users, mode, "--output", "-", faked=faked, data=data, sign=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    k = Keys(home, {})
    for who in ("good", "other", "expired", "revoked"):
        faked = "20200101T000000" if who in ("expired", "good") else None  # good: for rollback
        expiry = "1y" if who == "expired" else "never"
        uid = f"Test {who} <{who}@test.invalid>"
        k.gpg("--quick-gen-key", uid, "ed25519", "sign", expiry, faked=faked)
        listing = k.gpg("--with-colons", "--list-keys", uid, faked=faked).decode()
        k.fpr[who] = next(line.split(":")[9] for line in listing.splitlines() if line[:4] == "fpr:")
    k.signing_home = tmp_path_factory.mktemp("gnupg-signing")
    shutil.copytree(home, k.signing_home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("S.*"))
    rev = (home / "openpgp-revocs.d" / f"{k.fpr['revoked']}.rev").read_text()
    k.gpg("--import", data=rev.replace(":-----BEGIN", "-----BEGIN").encode())
    pinned = [k.fpr[w] for w in ("good", "expired", "revoked")]
    (home / "pinned.gpg").write_bytes(k.gpg("--export", *pinned))
    return k


@pytest.fixture
def upstream_server(tmp_path: Path) -> Iterator[UpstreamServer]:
    """An empty loopback upstream tree in a background thread (the push is a subprocess)."""
    with UpstreamServer(tmp_path / "up") as srv:
        yield srv


def _config(keys: Keys, tmp: Path, *, clearsigned: bool = False) -> Path:
    source = {
        "kind": "checksum-file",
        "url": BASE + ("CHECKSUM" if clearsigned else "SHA256SUMS"),
        "format": "gnu",
        "match": r"disk-\d+\.qcow2",
        "keys": "test",
    }
    if not clearsigned:
        source["signature_url"] = "{url}.gpg"
    config = {
        "upstream_keys": {
            "test": [
                {"file": str(keys.home / "pinned.gpg"), "fingerprint": keys.fpr[w]}
                for w in ("good", "expired", "revoked")
            ]
        },
        "entries": [
            {
                "name": "signed",
                "version": "1",
                "arches": ["x86_64"],
                "signature": "required",
                "source": source,
            }
        ],
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _push(
    srv: UpstreamServer, reg: Registry, config: Path, tmp: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    results = tmp / "results.json"
    results.unlink(missing_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "containerdisks",
            "images",
            "push",
            "--dry-run=false",
            "--config",
            str(config),
            "--source-registry",
            f"{reg.host}/test",
            "--work-dir",
            str(tmp / "work"),
            "--results-file",
            str(results),
            "--log-format",
            "json",
            *srv.mirror_args(),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(CONTAINERDISKS_UPSTREAM_SIGNATURES="true"),
    )
    data = json.loads(results.read_text()) if results.exists() else {}
    return proc, data


def _tree(root: Path, seed: str) -> bytes:
    data = make_qcow2(root.parent / "disks" / f"{seed}.qcow2", seed)
    put(root, BASE + IMAGE, data)
    return f"{sha256(data)}  {IMAGE}\n".encode()


def _published(reg: Registry) -> bool:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reg.host}/test/signed:1"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return out.returncode == 0


# (case, signer, co-signer, expected error fragment or None for accepted)
DETACHED = [
    ("good", "good", None, None),
    ("unknown co-signer", "good", "other", None),
    ("unknown signer", "other", None, "NO_PUBKEY"),
    ("expired", "expired", None, "EXPKEYSIG: pinned key"),
    ("revoked", "revoked", None, "REVKEYSIG: pinned key"),
    ("bad signature", "good", None, "BADSIG"),
]


@pytest.mark.parametrize(
    ("case", "signer", "also", "error"), DETACHED, ids=[c[0] for c in DETACHED]
)
def test_detached_signature_cases(
    keys: Keys,
    registry: Registry,
    upstream_server: UpstreamServer,
    tmp_path: Path,
    case: str,
    signer: str,
    also: str | None,
    error: str | None,
) -> None:
    sums = _tree(upstream_server.root, case)
    signature = keys.sign(signer, sums, also=also)
    if case == "bad signature":
        sums = sums.replace(sums[:1], b"0" if sums[:1] != b"0" else b"1", 1)
    put(upstream_server.root, BASE + "SHA256SUMS", sums)
    put(upstream_server.root, BASE + "SHA256SUMS.gpg", signature)
    proc, results = _push(upstream_server, registry, _config(keys, tmp_path), tmp_path)
    if error is None:
        assert 0 == proc.returncode, proc.stderr[-2000:]
        assert _published(registry)
        assert "Err" not in results["signed:1"]
    else:
        assert 1 == proc.returncode
        message = str(results["signed:1"]["Err"])
        assert error in message
        assert f"{BASE}SHA256SUMS.gpg: signature refused" in message
        assert "\n" not in message
        assert not _published(registry)
        # Refused at once: the signed file and its signature were fetched once each.
        assert 1 == upstream_server.count("/images.example/signed/SHA256SUMS.gpg")


def test_clearsigned_reads_only_the_signed_text(
    keys: Keys, registry: Registry, upstream_server: UpstreamServer, tmp_path: Path
) -> None:
    """Unsigned lines before and after the armour are not read: a forged entry there is not
    found, though gpgv exits 0 for the file."""
    sums = _tree(upstream_server.root, "clear")
    signed = keys.sign("good", sums, clear=True)
    forged = make_qcow2(tmp_path / "forged.qcow2", "forged")
    put(upstream_server.root, BASE + "disk-9.qcow2", forged)
    line = f"{sha256(forged)}  disk-9.qcow2\n".encode()
    put(upstream_server.root, BASE + "CHECKSUM", line + signed + line)
    config = _config(keys, tmp_path, clearsigned=True)
    proc, results = _push(upstream_server, registry, config, tmp_path)
    assert 0 == proc.returncode, proc.stderr[-2000:]
    assert 0 == upstream_server.count("/images.example/signed/disk-9.qcow2")
    assert 1 == upstream_server.count("/images.example/signed/" + IMAGE)
    assert results["signed:1"]["Tags"]


def test_rollback_to_an_older_signed_file_is_refused_unless_forced(
    keys: Keys, registry: Registry, upstream_server: UpstreamServer, tmp_path: Path
) -> None:
    config = _config(keys, tmp_path)
    old_sums = _tree(upstream_server.root, "old")
    # The older file was signed in 2025, the newer one now, both by `good`.
    old_sig = keys.gpg(
        "--local-user",
        keys.fpr["good"],
        "--detach-sign",
        "--output",
        "-",
        faked="20250101T000000",
        data=old_sums,
        sign=True,
    )
    new_sums = _tree(upstream_server.root, "new")
    put(upstream_server.root, BASE + "SHA256SUMS", new_sums)
    put(upstream_server.root, BASE + "SHA256SUMS.gpg", keys.sign("good", new_sums))
    proc, _ = _push(upstream_server, registry, config, tmp_path)
    assert 0 == proc.returncode, proc.stderr[-2000:]
    remembered = json.loads((tmp_path / "work" / "upstream-signatures.json").read_text())
    assert {"x86_64"} == set(remembered["signed:1"])

    _tree(upstream_server.root, "old")  # a mirror serves the older image and its signed file
    put(upstream_server.root, BASE + "SHA256SUMS", old_sums)
    put(upstream_server.root, BASE + "SHA256SUMS.gpg", old_sig)
    proc, results = _push(upstream_server, registry, config, tmp_path)
    assert 1 == proc.returncode
    message = str(results["signed:1"]["Err"])
    assert "refusing a rollback" in message
    assert f"{BASE}SHA256SUMS was signed 2025-01-01T00:00:00Z" in message

    proc, results = _push(upstream_server, registry, config, tmp_path, "--force")
    assert 0 == proc.returncode, proc.stderr[-2000:]
    assert "Err" not in results["signed:1"]


def test_a_name_listed_twice_in_the_signed_file_is_refused(
    keys: Keys, registry: Registry, upstream_server: UpstreamServer, tmp_path: Path
) -> None:
    """Both lines are signed, yet which checksum the download is held to would be the parser's
    choice (last wins for unsigned files, as medius): refused, naming the file and the name."""
    sums = _tree(upstream_server.root, "twice")
    sums = f"{'0' * 64}  {IMAGE}\n".encode() + sums
    put(upstream_server.root, BASE + "SHA256SUMS", sums)
    put(upstream_server.root, BASE + "SHA256SUMS.gpg", keys.sign("good", sums))
    proc, results = _push(upstream_server, registry, _config(keys, tmp_path), tmp_path)
    assert 1 == proc.returncode
    message = str(results["signed:1"]["Err"])
    assert f"{BASE}SHA256SUMS: malformed signed checksum file: '{IMAGE}' is listed twice" in message
    assert "\n" not in message
    assert 0 == upstream_server.count("/images.example/signed/" + IMAGE)
    assert not _published(registry)


# -- per-image signed files (openSUSE Tumbleweed and MicroOS) --------------------------------------

TW = "https://download.opensuse.org/tumbleweed/appliances/"
SNAPSHOT = "tw.x86_64-Snapshot20260207.qcow2"


def _per_image_config(tmp: Path, keys: Keys | None, match: str, keyring: str) -> Path:
    """An entry shaped as the default catalog's Tumbleweed: the unsigned listing picks the
    name, `<name>.sha256` signed by `<name>.sha256.asc` gives the checksum."""
    config: dict[str, object] = {
        "entries": [
            {
                "name": "tw",
                "version": "1",
                "arches": ["x86_64"],
                "signature": "required",
                "source": {
                    "kind": "checksum-file",
                    "url": TW + "SHA256SUMS",
                    "format": "gnu",
                    "keys": keyring,
                    "signed_file": "{file}.sha256",
                    "signature_url": "{url}.asc",
                    "match": match,
                    "pick": "last",
                },
            }
        ]
    }
    if keys is not None:
        config["upstream_keys"] = {
            "test": [{"file": str(keys.home / "pinned.gpg"), "fingerprint": keys.fpr["good"]}]
        }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _tw_published(reg: Registry) -> bool:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reg.host}/test/tw:1"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    return out.returncode == 0


# (case, expected error fragment or None for accepted)
PER_IMAGE = [
    ("good", None),
    ("signed file names another image", f"the signed file does not list {SNAPSHOT}"),
    ("listing disagrees with the signed file", f"signed checksum of {SNAPSHOT} is "),
    ("name twice in the signed file", f"'{SNAPSHOT}' is listed twice"),
    ("bad signature", f"{TW}{SNAPSHOT}.sha256.asc: signature refused: BADSIG"),
    ("unknown signer", f"{TW}{SNAPSHOT}.sha256.asc: signature refused: NO_PUBKEY"),
    ("no signature", f"{TW}{SNAPSHOT}.sha256.asc"),
]


@pytest.mark.parametrize(("case", "error"), PER_IMAGE, ids=[c[0] for c in PER_IMAGE])
def test_per_image_signed_file_after_the_listing_picked_the_name(
    keys: Keys,
    registry: Registry,
    upstream_server: UpstreamServer,
    tmp_path: Path,
    case: str,
    error: str | None,
) -> None:
    root = upstream_server.root
    image = make_qcow2(tmp_path / "tw.qcow2", case)
    put(root, TW + SNAPSHOT, image)
    older = make_qcow2(tmp_path / "older.qcow2", "older")
    put(root, TW + "tw.x86_64-Snapshot20260101.qcow2", older)
    listing = (
        f"{sha256(older)}  tw.x86_64-Snapshot20260101.qcow2\n"
        f"{sha256(image)}  {SNAPSHOT}\n"
        f"{sha256(image)}  tw.x86_64.qcow2\n"  # the alias: not matched
    )
    signed = f"{sha256(image)}  {SNAPSHOT}\n"
    if case == "signed file names another image":
        signed = f"{sha256(image)}  tw.x86_64.qcow2\n"
    elif case == "listing disagrees with the signed file":
        listing = listing.replace(f"{sha256(image)}  {SNAPSHOT}", f"{'a' * 64}  {SNAPSHOT}")
    elif case == "name twice in the signed file":
        signed += f"{'b' * 64}  {SNAPSHOT}\n"
    signer = "other" if case == "unknown signer" else "good"
    signature = keys.gpg(
        "--local-user", keys.fpr[signer], "--armor", "--detach-sign", "--output", "-",
        data=signed.encode(), sign=True,
    )  # fmt: skip
    if case == "bad signature":
        signed = signed.replace(signed[0], "0" if signed[0] != "0" else "1", 1)
    put(root, TW + "SHA256SUMS", listing)
    put(root, TW + SNAPSHOT + ".sha256", signed)
    if case != "no signature":
        put(root, TW + SNAPSHOT + ".sha256.asc", signature)
    config = _per_image_config(tmp_path, keys, r"tw\.{arch}-Snapshot\d+\.qcow2", "test")
    proc, results = _push(upstream_server, registry, config, tmp_path)
    # The listing chose the name; only that name's signed file was read, once.
    assert 1 == upstream_server.count(TW + SNAPSHOT + ".sha256")
    assert 0 == upstream_server.count(TW + "tw.x86_64-Snapshot20260101.qcow2.sha256")
    if error is None:
        assert 0 == proc.returncode, proc.stderr[-2000:]
        assert _tw_published(registry)
        assert 1 == upstream_server.count(TW + SNAPSHOT)
        remembered = json.loads((tmp_path / "work" / "upstream-signatures.json").read_text())
        assert {"x86_64"} == set(remembered["tw:1"])  # its signature time: the rollback guard
        return
    assert 1 == proc.returncode
    message = str(results["tw:1"]["Err"])
    assert error in message, message
    assert "\n" not in message
    assert 0 == upstream_server.count(TW + SNAPSHOT)  # refused before any download
    assert not _tw_published(registry)


def test_the_real_opensuse_signed_file_is_read_after_the_listing(
    registry: Registry, upstream_server: UpstreamServer, tmp_path: Path
) -> None:
    """openSUSE's real `.sha256` and v3 `.sha256.asc` (tests/fixtures/signed), pinned key, real
    push: the signature is accepted and the download is held to the signed checksum (our
    stand-in bytes are not openSUSE's image: a checksum mismatch, not a signature error). One
    changed byte in the signed file: BADSIG, nothing downloaded."""
    real = SIGNED / "opensuse-tumbleweed-cloud"
    name = "openSUSE-Tumbleweed-Minimal-VM.x86_64-Cloud.qcow2"
    signed = (real / f"{name}.sha256").read_bytes()
    put(upstream_server.root, TW + "SHA256SUMS", signed)  # a listing that agrees
    put(upstream_server.root, TW + name + ".sha256.asc", real / f"{name}.sha256.asc")
    put(upstream_server.root, TW + name, make_qcow2(tmp_path / "stand-in.qcow2", "stand-in"))
    config = _per_image_config(
        tmp_path, None, r"openSUSE-Tumbleweed-Minimal-VM\.{arch}-Cloud\.qcow2", "opensuse"
    )
    for changed in (False, True):
        body = signed.replace(b"1cba", b"1cbb", 1) if changed else signed
        put(upstream_server.root, TW + name + ".sha256", body)
        put(upstream_server.root, TW + "SHA256SUMS", body)
        proc, results = _push(upstream_server, registry, config, tmp_path)
        assert 1 == proc.returncode
        message = str(results["tw:1"]["Err"])
        if changed:
            assert f"{TW}{name}.sha256.asc: signature refused: BADSIG 35A2F86E29B700A4" in message
            assert 1 == upstream_server.count(TW + name)  # only the first push downloaded
        else:
            assert f"{TW}{name}: checksum mismatch: expected sha256 1cba9d4e" in message, message
            assert "signature" not in message
            assert 1 == upstream_server.count(TW + name)
