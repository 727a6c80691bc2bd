"""Upstream OpenPGP signatures: pinned keyrings, and one bounded `gpgv` run judged by its status.

One job: say whether a checksum file was signed by a key pinned for its distribution, and give
back exactly the signed bytes, the signer's primary fingerprint and the signature time.

Decisions that shaped it:
- `gpgv` is the verifier: the only one that reads every real upstream format (openSUSE's v3
  signature packets, keys bound only by SHA-1 such as Ubuntu's, Fedora's clearsigned files).
  It runs as a subprocess without a shell, with an empty private home directory, `LC_ALL=C`,
  `TZ=UTC`, one absolute binary keyring per call, a timeout and capped output.
- Its exit code is not trusted: gpgv exits 0 for a revoked or expired key and for a clearsigned
  file with unsigned lines around it, and 2 when a second, unknown co-signer signed too. The
  verdict comes from the `[GNUPG:]` status lines grouped by `NEWSIG`: any `BADSIG`, `NODATA` or
  exit 1 refuses the file; it is accepted only when one group has `GOODSIG` and a `VALIDSIG`
  whose PRIMARY fingerprint (field 10, so a subkey signature counts for its primary key) is on
  the keyring's pinned list, and none of `EXPKEYSIG`, `REVKEYSIG`, `EXPSIG`, `KEYREVOKED`,
  `KEYEXPIRED`. Groups of unknown co-signers (`ERRSIG`/`NO_PUBKEY`) are ignored.
- A clearsigned file's content is read only from gpgv's `--output` (the signed text), never from
  the downloaded file: lines outside the armour are not signed.
- Keys are pinned in the repository (`containerdisks/keys/`: armoured files and
  `manifest.toml` with keyring, fingerprint, user ID, expiry, source). A key signs only for its
  keyring, so a Fedora key never vouches for AlmaLinux. Users add keys in config
  (`upstream_keys`), to a pinned keyring or a new one, each with the fingerprint they trust.
  A pinned key past its expiry is an error naming the key, as `EXPKEYSIG` is.
- Every refusal is a `SignatureError` (a `SourceError`: one line naming the signed file and the
  status), never temporary: a signature does not heal by asking again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import os
import re
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from containerdisks.api import SourceError

__all__ = [
    "KEYS_DIR",
    "GpgvResult",
    "Keyring",
    "Keyrings",
    "PinnedKey",
    "SignatureError",
    "Verified",
    "dearmor",
    "judge",
    "run_gpgv",
    "verify",
]

#: The pinned keys shipped with the package.
KEYS_DIR = Path(__file__).resolve().parent / "keys"
#: Seconds one gpgv run may take.
GPGV_TIMEOUT = 30.0
#: The most status or error output read from gpgv, and the largest signed file or signature.
MAX_OUTPUT = 1 << 20
MAX_SIGNED = 16 << 20
MAX_SIGNATURE = 1 << 20

_FPR = re.compile(r"[0-9A-F]{40}")
#: Statuses that make a signature group unacceptable even with GOODSIG and VALIDSIG.
_SPOILERS = ("EXPKEYSIG", "REVKEYSIG", "EXPSIG", "KEYREVOKED", "KEYEXPIRED")


class SignatureError(SourceError):
    """A signature was refused or could not be checked: one line naming the file and why."""

    temporary = False


@dataclass(frozen=True)
class PinnedKey:
    """One key trusted for one keyring: its primary fingerprint, where its material is."""

    keyring: str
    fingerprint: str
    file: Path
    uid: str = ""
    expires: dt.date | None = None

    @property
    def label(self) -> str:
        return f"{self.fingerprint} ({self.uid or self.file.name})"


@dataclass(frozen=True)
class Keyring:
    """A keyring's keys: the allow-list of primary fingerprints and the material gpgv reads."""

    name: str
    keys: tuple[PinnedKey, ...]

    def key(self, fingerprint: str) -> PinnedKey | None:
        return next((k for k in self.keys if k.fingerprint == fingerprint), None)

    def material(self) -> bytes:
        """The keys as one binary keyring (armoured files dearmoured)."""
        out = []
        for path in sorted({k.file for k in self.keys}):
            try:
                data = path.read_bytes()
            except OSError as e:
                raise SignatureError(
                    f"keyring {self.name!r}: key file {path}: {e.strerror or e}"
                ) from None
            out.append(dearmor(data) if b"-----BEGIN PGP" in data else data)
        return b"".join(out)


class Keyrings:
    """Every keyring by name: the pinned ones, then the user's additions."""

    def __init__(self, keys: Iterable[PinnedKey]) -> None:
        rings: dict[str, list[PinnedKey]] = {}
        for k in keys:
            rings.setdefault(k.keyring, []).append(k)
        self._rings = {name: Keyring(name, tuple(ks)) for name, ks in rings.items()}

    @classmethod
    def pinned(cls, extra: Iterable[PinnedKey] = (), directory: Path = KEYS_DIR) -> Keyrings:
        """The keys of `directory/manifest.toml`, plus `extra` (from config)."""
        return cls([*read_manifest(directory), *extra])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._rings))

    def get(self, name: str) -> Keyring:
        ring = self._rings.get(name)
        if ring is None:
            known = ", ".join(self.names) or "none"
            raise SignatureError(f"no keyring {name!r} is pinned (known: {known})")
        return ring


def read_manifest(directory: Path) -> list[PinnedKey]:
    """The `[[key]]` tables of `directory/manifest.toml`."""
    path = directory / "manifest.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SignatureError(f"{path}: cannot read the pinned keys: {e}") from None
    out = []
    for i, entry in enumerate(data.get("key", [])):
        try:
            out.append(
                PinnedKey(
                    keyring=str(entry["keyring"]),
                    fingerprint=fingerprint(str(entry["fingerprint"])),
                    file=directory / Path(str(entry["file"])).name,
                    uid=str(entry.get("uid", "")),
                    expires=_expiry(str(entry.get("expires", "never"))),
                )
            )
        except (KeyError, ValueError) as e:
            raise SignatureError(f"{path}: key {i}: {e}") from None
    return out


def fingerprint(text: str) -> str:
    """A primary key fingerprint as gpgv prints it: 40 uppercase hex digits, no spaces."""
    fpr = "".join(text.split()).upper()
    if not _FPR.fullmatch(fpr):
        raise ValueError(f"fingerprint {text[:60]!r} is not 40 hex digits")
    return fpr


def _expiry(text: str) -> dt.date | None:
    return None if text == "never" else dt.date.fromisoformat(text)


def dearmor(data: bytes) -> bytes:
    """The binary packets of every ASCII-armoured block in `data` (headers and CRC dropped)."""
    out = []
    lines = data.decode("ascii", "replace").splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip().startswith("-----BEGIN PGP"):
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip():  # armour headers, up to the empty line
            i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("-----END"):
            line = lines[i].strip()
            if not (line.startswith("=") and len(line) == 5):  # the CRC line
                body.append(line)
            i += 1
        try:
            out.append(base64.b64decode("".join(body), validate=True))
        except binascii.Error as e:
            raise SignatureError(f"a pinned key is not valid armour: {e}") from None
    return b"".join(out)


# -- running gpgv ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpgvResult:
    """What one gpgv run said: exit code, status lines (without `[GNUPG:] `), the signed text."""

    returncode: int
    status: tuple[str, ...]
    output: bytes | None


async def run_gpgv(
    keyring: bytes,
    signed: bytes,
    signature: bytes | None = None,
    *,
    time_limit: float = GPGV_TIMEOUT,
    gpgv: str = "gpgv",
) -> GpgvResult:
    """Run gpgv on `signed` (clearsigned when `signature` is None, else detached) in a fresh
    private directory; its status lines and, for a clearsigned file, the text it signed."""
    if len(signed) > MAX_SIGNED or (signature is not None and len(signature) > MAX_SIGNATURE):
        raise SignatureError("signed file or signature larger than gpgv is given")
    with tempfile.TemporaryDirectory(prefix="containerdisks-gpgv-") as tmp:
        d = Path(tmp)
        home = d / "home"
        home.mkdir(mode=0o700)
        ring = d / "keyring.gpg"
        ring.write_bytes(keyring)
        data = d / "signed"
        data.write_bytes(signed)
        args = [gpgv, "--homedir", str(home), "--status-fd", "1", "--keyring", str(ring)]
        out = d / "plain"
        if signature is None:
            args += ["--output", str(out), str(data)]
        else:
            sig = d / "signature"
            sig.write_bytes(signature)
            args += [str(sig), str(data)]
        env = {"LC_ALL": "C", "TZ": "UTC", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=tmp,
            )
        except OSError as e:
            raise SignatureError(f"cannot run {gpgv}: {e.strerror or e}") from None
        try:
            async with asyncio.timeout(time_limit):
                status, _ = await asyncio.gather(_capped(proc.stdout), _capped(proc.stderr))
                returncode = await proc.wait()
        except (TimeoutError, _TooMuchOutputError) as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            why = f"took longer than {time_limit:g} s" if isinstance(e, TimeoutError) else str(e)
            raise SignatureError(f"gpgv {why}") from None
        plain = None
        if signature is None and out.is_file():
            plain = out.read_bytes()[: MAX_SIGNED + 1]
    lines = tuple(
        line.removeprefix("[GNUPG:] ")
        for line in status.decode("utf-8", "replace").splitlines()
        if line.startswith("[GNUPG:] ")
    )
    return GpgvResult(returncode, lines, plain)


class _TooMuchOutputError(Exception):
    pass


async def _capped(stream: asyncio.StreamReader | None) -> bytes:
    if stream is None:
        return b""
    chunks = []
    size = 0
    while chunk := await stream.read(1 << 16):
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise _TooMuchOutputError(f"wrote more than {MAX_OUTPUT} bytes of output")
        chunks.append(chunk)
    return b"".join(chunks)


# -- the verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """A signature accepted: the signed bytes, the signer's primary key, the signature time."""

    data: bytes
    key: PinnedKey
    signed_at: str  # RFC 3339, UTC

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint


def judge(
    result: GpgvResult, ring: Keyring, *, today: dt.date | None = None
) -> tuple[PinnedKey, str]:
    """The pinned key and signature time (RFC 3339) gpgv's status proves; else `SignatureError`
    with the deciding status (the message is completed by the caller with the file's URL)."""
    groups = _groups(result.status)
    every = [line for group in groups for line in group]
    words = [line.split()[0] for line in every if line.split()]
    for bad in ("BADSIG", "NODATA"):
        if bad in words:
            raise SignatureError(_status_line(every, bad))
    if result.returncode == 1:
        raise SignatureError(f"gpgv exit 1 ({_summary(words)})")
    if result.returncode not in (0, 2):
        raise SignatureError(f"gpgv exit {result.returncode} ({_summary(words)})")
    spoiled: str | None = None
    unpinned: str | None = None
    for group in groups:
        kinds = {line.split()[0] for line in group if line.split()}
        valid = next((line.split() for line in group if line.startswith("VALIDSIG ")), None)
        if "GOODSIG" not in kinds and not kinds & {"EXPKEYSIG", "REVKEYSIG", "EXPSIG"}:
            continue
        if valid is None or len(valid) < 11:
            continue
        primary = valid[10].upper()
        key = ring.key(primary)
        if key is None:
            unpinned = unpinned or f"good signature by {primary}, not a pinned key of {ring.name!r}"
            continue
        spoiler = next((s for s in _SPOILERS if s in kinds), None)
        if spoiler is not None:
            spoiled = spoiled or _spoiled(spoiler, key)
            continue
        today = today or dt.datetime.now(dt.UTC).date()
        if key.expires is not None and key.expires < today:
            raise SignatureError(
                f"pinned key {key.label} expired on {key.expires}: refresh it "
                f"(containerdisks/keys/, or upstream_keys for {ring.name!r})"
            )
        return key, _rfc3339(valid[3])
    if spoiled is not None:
        raise SignatureError(spoiled)
    if unpinned is not None:
        raise SignatureError(unpinned)
    missing = next((line for line in every if line.startswith("NO_PUBKEY ")), None)
    if missing is not None:
        raise SignatureError(f"{missing} (signed by a key not pinned for {ring.name!r})")
    raise SignatureError(f"no good signature ({_summary(words)}, gpgv exit {result.returncode})")


def _groups(status: Sequence[str]) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for line in status:
        if line.startswith("NEWSIG"):
            groups.append([])
        groups[-1].append(line)
    # Lines before the first NEWSIG belong to every group (gpgv prints none there today).
    head, rest = groups[0], groups[1:]
    return [head + g for g in rest] or [head]


def _spoiled(status: str, key: PinnedKey) -> str:
    if status in ("EXPKEYSIG", "KEYEXPIRED"):
        return (
            f"EXPKEYSIG: pinned key {key.label} has expired: refresh it "
            "(containerdisks/keys/, or upstream_keys)"
        )
    if status in ("REVKEYSIG", "KEYREVOKED"):
        return f"REVKEYSIG: pinned key {key.label} is revoked"
    return f"EXPSIG: the signature by {key.label} has expired"


def _status_line(lines: Sequence[str], word: str) -> str:
    line = next(line for line in lines if line.split()[:1] == [word])
    return _printable(line)[:200]


def _summary(words: Sequence[str]) -> str:
    shown = [w for w in dict.fromkeys(words) if w not in ("NEWSIG", "KEY_CONSIDERED", "SIG_ID")]
    return _printable(" ".join(shown)[:200]) or "no status"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _rfc3339(field: str) -> str:
    """VALIDSIG's signature time (seconds since the epoch, or ISO 8601 basic) as RFC 3339."""
    if field.isdigit():
        when = dt.datetime.fromtimestamp(int(field), dt.UTC)
    else:
        try:
            when = dt.datetime.strptime(field, "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
        except ValueError:
            raise SignatureError(f"VALIDSIG signature time {field[:40]!r} unreadable") from None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


async def verify(
    ring: Keyring,
    signed: bytes,
    signature: bytes | None = None,
    *,
    today: dt.date | None = None,
    time_limit: float = GPGV_TIMEOUT,
) -> Verified:
    """Verify `signed` (clearsigned, or detached by `signature`) against `ring`: the signed
    bytes (a clearsigned file's text from gpgv's `--output`), key and time; else
    `SignatureError`."""
    result = await run_gpgv(ring.material(), signed, signature, time_limit=time_limit)
    key, signed_at = judge(result, ring, today=today)
    if signature is None:
        if result.output is None:
            raise SignatureError("gpgv wrote no signed text")
        return Verified(result.output, key, signed_at)
    return Verified(signed, key, signed_at)
