"""What a connection lost mid-upload costs: one push with a reset at half the layer, against a
clean push of the same image, interleaved in one run.

The publisher handles a transient failure in the middle of a layer upload by streaming the arch
again from upstream (retry.py explains why: no replay buffer, memory stays flat). This
script measures the price: wall time and upstream bytes of the faulted run against the clean
one. A fresh registry per run, behind the fault-injecting proxy of the tests; a loopback
upstream serving a synthetic image of mixed random and zero regions.

    python benchmarks/restream_cost.py --size-mib 512 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.cli import clean_env
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.registry import start_registry
from tests.support.upstream_server import UpstreamServer, put


def make_image(path: Path, size: int) -> str:
    rnd = random.Random(1)
    h = hashlib.sha256()
    with path.open("wb") as f:
        written = 0
        while written < size:
            block = rnd.randbytes(1 << 20) if (written >> 20) % 2 == 0 else bytes(1 << 20)
            block = block[: size - written]
            f.write(block)
            h.update(block)
            written += len(block)
    return h.hexdigest()


def run(root: Path, work: Path, size: int, *, fault: bool) -> dict[str, float]:
    config = work / "catalog.yaml"
    config.write_text(
        json.dumps(
            {
                "entries": [
                    {
                        "name": "bench",
                        "version": "1",
                        "arches": ["x86_64"],
                        "source": {
                            "kind": "checksum-file",
                            "url": "https://example.org/images/SHA256SUMS",
                            "format": "gnu",
                            "match": r"disk\.img",
                        },
                    }
                ]
            }
        )
    )
    with (
        UpstreamServer(root) as srv,
        start_registry(work / "registry") as reg,
        FaultProxy(reg.url) as proxy,
    ):
        if fault:
            proxy.add(Rule("PATCH", r"/blobs/uploads/", "reset", after_bytes=size // 2))
        env = clean_env()
        started = time.monotonic()
        result = subprocess.run(
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
                f"{proxy.host}/bench",
                "--work-dir",
                str(work / "spool"),
                "--results-file",
                str(work / "results.json"),
                "--log-format",
                "json",
                *srv.mirror_args(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            cwd=work,
            check=False,
        )
        seconds = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(f"push failed: {result.stderr[-2000:]}")
        gets = srv.count("https://example.org/images/disk.img")
    return {"seconds": seconds, "downloads": gets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="restream-") as tmp:
        base = Path(tmp)
        root = base / "up"
        image = base / "disk.img"
        digest = make_image(image, size)
        put(root, "https://example.org/images/disk.img", image)
        put(root, "https://example.org/images/SHA256SUMS", f"{digest}  disk.img\n")
        image.unlink()
        results: dict[str, list[dict[str, float]]] = {"clean": [], "reset at 50%": []}
        for i in range(args.rounds):
            for name, fault in (("clean", False), ("reset at 50%", True)):
                work = base / f"run-{i}-{fault}"
                work.mkdir()
                results[name].append(run(root, work, size, fault=fault))
                subprocess.run(["rm", "-rf", str(work)], check=True)
        clean = statistics.median(r["seconds"] for r in results["clean"])
        print(f"image: {args.size_mib} MiB, rounds: {args.rounds}")
        print(f"{'variant':<14} {'median s':>9} {'MB/s':>7} {'downloads':>9} {'vs clean':>8}")
        for name, runs in results.items():
            med = statistics.median(r["seconds"] for r in runs)
            downloads = statistics.median(r["downloads"] for r in runs)
            print(
                f"{name:<14} {med:9.2f} {size / med / 1e6:7.1f} {downloads:9.0f} "
                f"{med / clean:7.2f}x"
            )


if __name__ == "__main__":
    main()
