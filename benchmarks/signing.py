"""What signing adds to `images push`: a 1 GiB push and a no-change pass, with and without.

One job: one synthetic image (default 1 GiB, seeded random and zero regions, raw, so nothing is
spooled) served on loopback through the `static` source; one docker-registry 2.8; per round,
interleaved and in rotated order, `images push` into a fresh namespace with and without
`--sign-key`, then the same push again (the no-change pass) with and without. Wall clock per run
(process start to exit), and the registry requests each run made, counted in the registry's
access log. Also the signing alone (`attach`, its documents and their registry writes) timed
in-process, which does not depend on the image's size.

Run from the repository root with the project venv active::

    python benchmarks/signing.py --size 1GiB --rounds 3 --json benchmarks/results/signing.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cli import clean_env, static_catalog
from tests.support.registry import start_registry
from tests.support.upstream_server import UpstreamServer, put

URL = "https://images.example.org/bench/disk.raw"


def make_image(path: Path, size: int) -> str:
    rng = random.Random(42)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, rng.choice((1 << 16, 1 << 20, 4 << 20)))
            chunk = rng.randbytes(n) if rng.random() < 0.53 else bytes(n)
            f.write(chunk)
            digest.update(chunk)
            left -= n
    return digest.hexdigest()


def requests(log: str) -> tuple[int, int]:
    """(all registry requests, writes) in an access log."""
    every = re.findall(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/', log)
    return len(every), sum(1 for m in every if m in {"PUT", "POST", "PATCH", "DELETE"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    size = int(args.size.removesuffix("GiB")) << 30 if args.size.endswith("GiB") else int(args.size)
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "up"
        image = tmp / "disk.raw"
        checksum = make_image(image, size)
        put(root, URL, image)
        image.unlink()
        catalog = static_catalog(tmp / "catalog.yaml", URL, checksum)
        key = ["-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(tmp / "k.pem")]
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", *key], check=True)
        with UpstreamServer(root) as srv, start_registry(tmp / "registry") as reg:
            for r in range(args.rounds):
                order = ["plain", "signed"] if r % 2 == 0 else ["signed", "plain"]
                for phase in ("push", "no-change"):
                    for variant in order:
                        ns = f"{reg.host}/r{r}-{variant}"
                        sign = ["--sign-key", str(tmp / "k.pem")] if variant == "signed" else []
                        before = requests(reg.log_text())
                        start = time.monotonic()
                        done = subprocess.run(
                            [sys.executable, "-m", "containerdisks", "--config", str(catalog),
                             "images", "push", "--dry-run=false", "--source-registry", ns,
                             "--work-dir", str(tmp / "work"), "--results-file",
                             str(tmp / "results.json"), "--log-level", "warning",
                             *srv.mirror_args(), *sign],
                            check=False, capture_output=True, text=True, env=clean_env(),
                        )  # fmt: skip
                        seconds = time.monotonic() - start
                        assert done.returncode == 0, done.stderr
                        after = requests(reg.log_text())
                        row = {
                            "seconds": seconds,
                            "requests": after[0] - before[0],
                            "writes": after[1] - before[1],
                        }
                        runs.setdefault(f"{phase}/{variant}", []).append(row)
                        print(f"round {r} {phase:9} {variant:6} {row}", flush=True)
    summary = {}
    for name, rows in runs.items():
        summary[name] = {
            "median_seconds": round(statistics.median(r["seconds"] for r in rows), 3),
            "requests": rows[-1]["requests"],
            "writes": rows[-1]["writes"],
        }
    for phase in ("push", "no-change"):
        plain, signed = summary[f"{phase}/plain"], summary[f"{phase}/signed"]
        added = signed["median_seconds"] - plain["median_seconds"]
        summary[f"{phase}/added"] = {
            "seconds": round(added, 3),
            "percent": round(100 * added / plain["median_seconds"], 2),
            "requests": signed["requests"] - plain["requests"],
            "writes": signed["writes"] - plain["writes"],
        }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"size": size, "rounds": args.rounds, "runs": runs,
                                         "summary": summary}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
