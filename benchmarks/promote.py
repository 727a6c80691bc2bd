"""`images promote` of a 1 GiB image between two local registries, against `skopeo copy --all`.

One job: time the registry-to-registry copy path (registry/copy.py) against the reference tool
on the same image in the same run. The image is an OCI index with one amd64 manifest whose layer
is `--size-mib` of random data (incompressible, as a real qcow2 mostly is), written as an OCI
layout by hand and pushed once into the source registry with skopeo. Each run copies it into a
fresh, empty target registry (its own data dir, removed afterwards), so every run moves every
byte; promote and skopeo alternate, `--rounds` each. Both are timed as whole processes
(start-up included): `python -m containerdisks images promote --dry-run=false` with a results
file at stage `verify`, and `skopeo copy --all --preserve-digests`. Each target is checked
afterwards: the tag must name the source's digest. promote's own `promoted` log event gives the
time of the copy and tags alone (without the interpreter's start-up), reported beside it.

    python benchmarks/promote.py --size-mib 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.cli import clean_env
from tests.support.registry import Registry, start_registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
CHUNK = 16 << 20


def _blob(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_layout(root: Path, size: int) -> None:
    """An OCI layout tagged `1`: index -> amd64 manifest -> config + `size` random bytes."""
    (root / "blobs/sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    tmp = root / "layer.tmp"
    h = hashlib.sha256()
    with tmp.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            f.write(block)
            h.update(block)
            left -= len(block)
    layer_digest = h.hexdigest()
    tmp.rename(root / "blobs/sha256" / layer_digest)
    layer = {"digest": f"sha256:{layer_digest}", "size": size}
    config = _blob(
        root,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ).encode(),
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **config},
        "layers": [{"mediaType": OCI_LAYER, **layer}],
    }
    child = _blob(root, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                **child,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    top = {"mediaType": OCI_INDEX, **_blob(root, json.dumps(index).encode())}
    top["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))


def digest_of(reg: Registry, repo: str, ref: str) -> str:
    return "sha256:" + hashlib.sha256(reg.inspect_raw(repo, ref)).hexdigest()


def run_promote(work: Path, src: Registry, dst: Registry, digest: str) -> tuple[float, float]:
    """(wall seconds of the process, seconds of the copy and tags as its `promoted` log says)"""
    results = work / "results.json"
    results.write_text(
        json.dumps({"bench:1": {"Tags": ["bench:1"], "Stage": "verify", "Digest": digest}})
    )
    command = [
        sys.executable,
        "-m",
        "containerdisks",
        "images",
        "promote",
        "--dry-run=false",
        "--source-registry",
        f"{src.host}/staging",
        "--target-registry",
        f"{dst.host}/prod",
        "--results-file",
        str(results),
        "--log-format",
        "json",
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(), check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"promote failed ({done.returncode}): {done.stderr.strip()}")
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (copy,) = [e["seconds"] for e in events if e.get("event") == "promoted"]
    return seconds, float(copy)


def run_skopeo(src: Registry, dst: Registry) -> float:
    command = [
        "skopeo",
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{src.host}/staging/bench:1",
        f"docker://{dst.host}/prod/bench:1",
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"skopeo failed ({done.returncode}): {done.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    size = args.size_mib << 20
    times: dict[str, list[float]] = {"promote": [], "skopeo": [], "promote_copy": []}
    with tempfile.TemporaryDirectory(prefix="bench-promote-") as tmp:
        work = Path(tmp)
        make_layout(work / "layout", size)
        with start_registry(work / "src") as src:
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--quiet",
                    "--all",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    f"oci:{work / 'layout'}:1",
                    f"docker://{src.host}/staging/bench:1",
                ],
                check=True,
                capture_output=True,
            )
            shutil.rmtree(work / "layout")
            digest = digest_of(src, "staging/bench", "1")
            for i in range(args.rounds):
                for tool in ("promote", "skopeo"):
                    with start_registry(work / f"dst-{tool}-{i}") as dst:
                        subprocess.run(["sync"], check=True)
                        if tool == "promote":
                            seconds, copy = run_promote(work, src, dst, digest)
                            times["promote_copy"].append(copy)
                        else:
                            seconds = run_skopeo(src, dst)
                        got = digest_of(dst, "prod/bench", "1")
                        if got != digest:
                            raise SystemExit(f"{tool}: target has {got}, source {digest}")
                    shutil.rmtree(work / f"dst-{tool}-{i}")
                    times[tool].append(seconds)
                    rate = args.size_mib / seconds
                    print(f"round {i + 1} {tool:8} {seconds:6.2f} s {rate:6.0f} MiB/s", flush=True)
                    if tool == "promote":
                        print(f"        (copy alone {times['promote_copy'][-1]:.2f} s)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["promote"] / med["skopeo"]
    copy_ratio = med["promote_copy"] / med["skopeo"]
    print(
        f"median: promote {med['promote']:.2f} s (its copy alone {med['promote_copy']:.2f} s), "
        f"skopeo {med['skopeo']:.2f} s; ratio {ratio:.2f}x (copy alone {copy_ratio:.2f}x)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size_mib": args.size_mib,
                    "times": times,
                    "ratio": ratio,
                    "copy_ratio": copy_ratio,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
