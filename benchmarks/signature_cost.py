"""What upstream signature checking adds to a pass: the time of one gpgv verification.

Verifies the real signed fixtures (tests/fixtures/signed) with the pinned keys, N times each,
and prints the median and maximum in milliseconds as JSON. Requests: one extra per signed
metadata file (the detached signature; Fedora's CHECKSUM once per release), counted by design
in docs/trust.md and shown by tests/upstream/test_signed_push.py.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from containerdisks import openpgp

SIGNED = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "signed"
CASES = {
    "ubuntu detached (RSA 4096, SHA-512)": (
        "ubuntu",
        SIGNED / "ubuntu-22.04-release" / "SHA256SUMS",
        SIGNED / "ubuntu-22.04-release" / "SHA256SUMS.gpg",
    ),
    "fedora clearsigned (RSA 4096, SHA-256)": (
        "fedora-42",
        SIGNED / "fedora-42-server" / "Fedora-Server-42-1.1-x86_64-CHECKSUM",
        None,
    ),
}


async def main(rounds: int) -> dict[str, dict[str, float]]:
    rings = openpgp.Keyrings.pinned()
    out = {}
    for name, (ring, data, sig) in CASES.items():
        signed, signature = data.read_bytes(), sig.read_bytes() if sig else None
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await openpgp.verify(rings.get(ring), signed, signature)
            times.append((time.perf_counter() - start) * 1000)
        out[name] = {
            "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)), indent=2))
