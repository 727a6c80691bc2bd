"""What trust costs a no-change pass of a signed entry, and what `attach` alone costs.

One job, two measurements, in one run on one machine:

1. The no-change pass of one entry whose upstream is signed (a loopback tree: `SHA256SUMS` and
   its detached `SHA256SUMS.gpg`, made here by gpg with a fresh ed25519 key pinned through
   `upstream_keys`), published once with `--sign-key`, then passed over again in four variants:
   upstream signature checking on/off (`CONTAINERDISKS_UPSTREAM_SIGNATURES`) x `--sign-key`
   on/off. Per round the four run interleaved, in rotated order; wall clock per run (process
   start to exit), and the requests each made to the upstream and to the registry. Medians.
2. `registry/attach.py`'s `attach` alone for one digest (one image manifest), in process against
   the same docker-registry: first publish (a fresh repository each time: every signature,
   attestation, bundle and referrers index written) and the re-run (everything there: HEADs
   only). Median of many.

Run from the repository root with the project venv active::

    python benchmarks/signed_pass.py --rounds 7 --attach 40 --json benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from containerdisks import oci
from containerdisks.registry.attach import attach
from containerdisks.signing import Signer
from tests.support.cli import clean_env
from tests.support.disks import make_qcow2, sha256
from tests.support.registry import start_registry
from tests.support.upstream_server import UpstreamServer, put

BASE = "https://images.example/signed/"
VARIANTS = ("upstream-off/sign-off", "upstream-on/sign-off", "upstream-off/sign-on",
            "upstream-on/sign-on")  # fmt: skip


def registry_requests(log: str) -> int:
    return len(re.findall(r'"(?:GET|HEAD|PUT|POST|PATCH|DELETE) /v2/', log))


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(
        ["gpg", "--batch", "--homedir", str(home), "--passphrase", "", *args],
        input=data, capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def signed_tree(tmp: Path, root: Path) -> Path:
    """The upstream tree and a config pinning its key; returns the config."""
    home = tmp / "gnupg"
    home.mkdir(mode=0o700)
    gpg(home, "--quick-gen-key", "Bench <bench@test.invalid>", "ed25519", "sign", "never")
    listing = gpg(home, "--with-colons", "--list-keys").decode()
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line[:4] == "fpr:")
    (home / "pinned.gpg").write_bytes(gpg(home, "--export", fpr))
    image = make_qcow2(tmp / "disk.qcow2", "bench")
    put(root, BASE + "disk-1.qcow2", image)
    sums = f"{sha256(image)}  disk-1.qcow2\n".encode()
    put(root, BASE + "SHA256SUMS", sums)
    put(root, BASE + "SHA256SUMS.gpg", gpg(home, "--detach-sign", "--output", "-", data=sums))
    config = {
        "upstream_keys": {"bench": [{"file": str(home / "pinned.gpg"), "fingerprint": fpr}]},
        "entries": [{
            "name": "signed", "version": "1", "arches": ["x86_64"], "signature": "required",
            "source": {"kind": "checksum-file", "url": BASE + "SHA256SUMS", "format": "gnu",
                       "match": r"disk-\d+\.qcow2", "keys": "bench",
                       "signature_url": "{url}.gpg"},
        }],
    }  # fmt: skip
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def no_change_passes(rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "up"
        config = signed_tree(tmp, root)
        key = tmp / "k.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", str(key)], check=True)  # fmt: skip
        with UpstreamServer(root) as srv, start_registry(tmp / "registry") as reg:

            def push(upstream: bool, sign: bool) -> dict[str, float]:
                env = clean_env(CONTAINERDISKS_UPSTREAM_SIGNATURES=str(upstream).lower())
                before_up, before_reg = srv.count(), registry_requests(reg.log_text())
                start = time.monotonic()
                done = subprocess.run(
                    [sys.executable, "-m", "containerdisks", "--config", str(config),
                     "images", "push", "--dry-run=false", "--source-registry", f"{reg.host}/b",
                     "--work-dir", str(tmp / "work"), "--results-file",
                     str(tmp / "results.json"), "--log-level", "warning",
                     *srv.mirror_args(), *(["--sign-key", str(key)] if sign else [])],
                    check=False, capture_output=True, text=True, env=env,
                )  # fmt: skip
                seconds = time.monotonic() - start
                assert done.returncode == 0, done.stderr
                return {
                    "seconds": seconds,
                    "upstream_requests": srv.count() - before_up,
                    "registry_requests": registry_requests(reg.log_text()) - before_reg,
                }

            first = push(upstream=True, sign=True)  # the publish; then only no-change passes
            print(f"publish {first}", flush=True)
            for r in range(rounds):
                order = VARIANTS[r % 4 :] + VARIANTS[: r % 4]
                for variant in order:
                    upstream, sign = (part.endswith("-on") for part in variant.split("/"))
                    row = push(upstream, sign)
                    runs[variant].append(row)
                    print(f"round {r} {variant:22} {row}", flush=True)
    summary = {
        v: {
            "median_seconds": round(statistics.median(r["seconds"] for r in rows), 3),
            "min_seconds": round(min(r["seconds"] for r in rows), 3),
            "max_seconds": round(max(r["seconds"] for r in rows), 3),
            "upstream_requests": rows[-1]["upstream_requests"],
            "registry_requests": rows[-1]["registry_requests"],
        }
        for v, rows in runs.items()
    }
    return {"runs": runs, "summary": summary}


async def attach_alone(iterations: int, host: str, key: Path) -> dict[str, Any]:
    signer = Signer.load(key)
    provenance = json.dumps({"_type": "https://in-toto.io/Statement/v1", "bench": True}).encode()
    first: list[float] = []
    again: list[float] = []
    writes: tuple[int, int] = (0, 0)
    async with oci.RegistryClient(host) as client:
        for i in range(iterations):
            repo = f"attach/r{i}"
            config = await client.put_blob(
                repo, b"{}", media_type="application/vnd.oci.empty.v1+json"
            )
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": config.media_type, "digest": config.digest, "size": 2},
                "layers": [], "annotations": {"n": str(i)},
            }).encode()  # fmt: skip
            media = "application/vnd.oci.image.manifest.v1+json"
            digest = await client.put_manifest(repo, "1", media, manifest)
            image = [oci.Descriptor(media, digest, len(manifest))]
            kw = {"signer": signer, "identity": "quay.io/containerdisks/bench",
                  "provenance": provenance}  # fmt: skip
            start = time.perf_counter()
            w1 = await attach(client, repo, image, **kw)  # type: ignore[arg-type]
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            w2 = await attach(client, repo, image, **kw)  # type: ignore[arg-type]
            again.append(time.perf_counter() - start)
            writes = (w1, w2)
    return {
        "iterations": iterations,
        "first_publish_ms": {"median": round(1000 * statistics.median(first), 1),
                             "max": round(1000 * max(first), 1)},
        "rerun_ms": {"median": round(1000 * statistics.median(again), 1),
                     "max": round(1000 * max(again), 1)},
        "writes_first_publish": writes[0],
        "writes_rerun": writes[1],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--attach", type=int, default=40)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    # --rounds 0: `attach` alone (e.g. to A/B two trees with PYTHONPATH)
    passes = no_change_passes(args.rounds) if args.rounds else {"summary": None}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "k.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", str(key)], check=True)  # fmt: skip
        with start_registry(tmp / "registry") as reg:
            alone = asyncio.run(attach_alone(args.attach, reg.host, key))
    out = {"rounds": args.rounds, "cpus": os.cpu_count(), "no_change": passes, "attach": alone}
    print(json.dumps({"no_change": passes["summary"], "attach": alone}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
