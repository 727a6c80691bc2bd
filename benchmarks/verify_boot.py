"""How long `images verify --local` takes, and where the time goes; how fast it pulls a disk.

One job, two measurements, in one run (the host is shared and noisy: compare within a run):

1. Boot: the tiny test image (tests/support/tinycloud, built here from Debian packages) is
   published by the real `images push` into a fresh local `docker-registry` as three entries
   (UEFI, BIOS via `--firmware bios`, Secure Boot via the catalog), then each is verified by a
   separate `python -m containerdisks images verify --local` process. Per run: wall time from
   process start to exit, the pull-and-extract time (`disk_pulled` event), and the boot to
   `echo hello` (from `booting` to `verified`), read from the JSON log.
2. Pull: a 1 GiB incompressible disk pushed into the registry; `pull_disk` (registry -> digest
   check -> gunzip -> untar -> file) against curl of the same layer blob, to `/dev/null` (the
   registry's download speed) and to a file in the same directory (the same bytes landing on the
   same disk), rotated, `--rounds` each, `sync` before each run so that none pays for the
   previous one's writeback; ratio = curl's time / ours. Each `pull_disk` runs in a fresh
   process (timed inside it, start-up excluded); `--base TREE` times that tree's `pull_disk`
   beside ours in the same rotation (A/B, e.g. a `git worktree add --detach` of main). The
   shell floor of a gzip pull runs beside them: `curl | tee >(sha256sum) | python3 -m
   isal.igzip -dc | tee >(sha256sum) | tar -x` (each stage its own process).

Run from the repository root with the project venv active (needs the packages of .ci/run)::

    python benchmarks/verify_boot.py --rounds 3 [--only pull] [--base ../main-tree]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml
from isal import isal_zlib

from containerdisks import oci
from containerdisks.verify.pull import pull_disk
from tests.support.cli import clean_env
from tests.support.registry import start_registry
from tests.support.tinycloud import build_images
from tests.support.upstream_server import UpstreamServer, put

HOST = "bench.example"


def _entry(name: str, image: Path, **extra: object) -> dict[str, object]:
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    url = f"https://{HOST}/{image.name}"
    return {
        "name": name,
        "version": "1",
        "arches": ["x86_64"],
        "user": "root",
        "source": {"kind": "static", "per_arch": {"x86_64": {"url": url, "checksum": digest}}},
        **extra,
    }


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containerdisks", *args, "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=900,
        env=clean_env(),
        cwd=cwd,
        check=False,
    )


def _stamp(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def boot_runs(tmp: Path, rounds: int) -> dict[str, list[dict[str, float]]]:
    images = build_images(tmp / "images")
    up = tmp / "up"
    for image in (images.good, images.secure):
        put(up, f"https://{HOST}/{image.name}", image)
    config = tmp / "catalog.yaml"
    entries = [_entry("tiny", images.good), _entry("tiny-sb", images.secure, secure_boot=True)]
    config.write_text(yaml.safe_dump({"entries": entries}))
    out: dict[str, list[dict[str, float]]] = {"uefi": [], "bios": [], "secure": []}
    with start_registry(tmp / "registry") as reg, UpstreamServer(up) as srv:
        target = f"{reg.host}/cd"
        for _ in range(rounds):
            for variant, focus, extra in (
                ("uefi", "tiny:1", ()),
                ("bios", "tiny:1", ("--firmware", "bios")),
                ("secure", "tiny-sb:1", ()),
            ):
                results = tmp / f"results-{variant}.json"
                pushed = _cli(
                    "images", "push", "--dry-run=false", "--config", str(config),
                    "--focus", focus, "--source-registry", target,
                    "--results-file", str(results), *srv.mirror_args(), cwd=tmp,
                )  # fmt: skip
                assert pushed.returncode == 0, pushed.stderr
                if not json.loads(results.read_text()):  # up to date: record it as pushed
                    name = focus.split(":")[0]
                    raw = reg.inspect_raw(f"cd/{name}", "1")
                    record = {"Tags": [f"{name}:1"], "Stage": "push",
                              "Digest": "sha256:" + hashlib.sha256(raw).hexdigest()}  # fmt: skip
                    results.write_text(json.dumps({focus: record}))
                started = time.monotonic()
                done = _cli(
                    "images", "verify", "--local", "--dry-run=false", "--config", str(config),
                    "--focus", focus, "--registry", target, "--results-file", str(results),
                    "--work-dir", str(tmp / "work"), *extra, cwd=tmp,
                )  # fmt: skip
                wall = time.monotonic() - started
                assert done.returncode == 0, done.stdout + done.stderr[-2000:]
                events = {
                    e["event"]: e for e in map(json.loads, done.stderr.splitlines()) if "event" in e
                }
                pull = float(events["disk_pulled"]["seconds"])
                boot = _stamp(events["verified"]) - _stamp(events["booting"])
                out[variant].append({"wall": wall, "pull": pull, "boot_to_hello": boot})
                print(
                    f"{variant:6} wall {wall:5.2f} s  pull {pull:4.2f} s  boot->hello {boot:5.2f} s"
                )
                results.unlink()
    return out


async def _pull(host: str, repository: str, digest: str, dest: Path) -> float:
    async with oci.RegistryClient(host) as client:
        started = time.monotonic()
        await pull_disk(client, repository, digest, "amd64", dest, where=repository)
        return time.monotonic() - started


def _pull_in(tree: Path, host: str, repository: str, digest: str, dest: Path) -> float:
    """`_pull` with `tree`'s code, in a fresh process; its seconds, start-up excluded."""
    script = (
        "import asyncio, sys; from pathlib import Path; from benchmarks.verify_boot import _pull;"
        "print(asyncio.run(_pull(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", script, host, repository, digest, str(dest)],
        env=env, cwd=tree, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(done.stdout.split()[-1])


def _inflate_alone(layer: bytes) -> float:
    """isal gunzip of the whole layer from memory, in 4 MiB pieces: the floor of a gzip pull."""
    d = isal_zlib.decompressobj(wbits=31)
    started = time.monotonic()
    for i in range(0, len(layer), 4 << 20):
        d.decompress(layer[i : i + (4 << 20)])
    return time.monotonic() - started


def pull_runs(tmp: Path, rounds: int, size: int, base: Path | None) -> dict[str, list[float]]:
    """1 GiB: ours (pull_disk, gzip and uncompressed layers), `base`'s if given, curl of the
    layer and the shell floor, interleaved."""
    disk = tmp / "big.img"
    with disk.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    up = tmp / "big-up"
    put(up, f"https://{HOST}/big.img", disk)
    config = tmp / "big.yaml"
    config.write_text(yaml.safe_dump({"entries": [_entry("big", disk), _entry("bignone", disk)]}))
    names = ["curl", "curl-file", "curl-sha256", "shell-gzip", "ours", "ours-none"]
    if base is not None:
        names += ["base", "base-none"]
    times: dict[str, list[float]] = {n: [] for n in [*names, "inflate-alone"]}
    with start_registry(tmp / "big-registry") as reg, UpstreamServer(up) as srv:
        for name, media in (
            ("big", []),
            ("bignone", ["--media-types", "oci", "--layer-compression", "none"]),
        ):
            pushed = _cli(
                "images", "push", "--dry-run=false", "--config", str(config),
                "--focus", f"{name}:1",
                "--source-registry", reg.host, "--results-file", str(tmp / "big.json"),
                *media, *srv.mirror_args(), cwd=tmp,
            )  # fmt: skip
            assert pushed.returncode == 0, pushed.stderr
        disk.unlink()
        manifest = json.loads(reg.inspect_raw("big", "1"))
        layer = manifest["layers"][0]["digest"]
        tops = {
            n: "sha256:" + hashlib.sha256(reg.inspect_raw(n, "1")).hexdigest()
            for n in ("big", "bignone")
        }
        url = f"{reg.url}/v2/big/blobs/{layer}"
        root = Path(__file__).resolve().parents[1]
        igzip = f"{sys.executable} -m isal.igzip -dc"
        shell = (
            f"curl -sf {url} | tee >(sha256sum >/dev/null) | {igzip} "
            f"| tee >(sha256sum >/dev/null) | tar -x -C {tmp / 'untar'}"
        )
        for i in range(rounds):
            for variant in names[i % len(names) :] + names[: i % len(names)]:
                dest = tmp / "pulled.img"
                os.sync()  # no run pays for the previous one's writeback
                if variant == "shell-gzip":
                    (tmp / "untar").mkdir()
                    started = time.monotonic()
                    subprocess.run(["bash", "-o", "pipefail", "-c", shell], check=True)
                    seconds = time.monotonic() - started
                    subprocess.run(["rm", "-rf", str(tmp / "untar")], check=True)
                elif variant.startswith("curl"):
                    sink = str(dest) if variant == "curl-file" else "/dev/null"
                    command = ["curl", "-sf", "-o", sink, url]
                    if variant == "curl-sha256":  # the least a verified download does
                        command = ["sh", "-c", f"curl -sf {url} | openssl dgst -sha256 >/dev/null"]
                    started = time.monotonic()
                    subprocess.run(command, check=True)
                    seconds = time.monotonic() - started
                    if sink != "/dev/null":
                        dest.unlink()
                else:
                    repo = "bignone" if variant.endswith("-none") else "big"
                    tree = root if variant.startswith("ours") else base
                    assert tree is not None
                    seconds = _pull_in(tree, reg.host, repo, tops[repo], dest)
                    dest.unlink()
                times[variant].append(seconds)
                mbps = manifest["layers"][0]["size"] / 1e6 / seconds
                print(f"pull {variant:11} {seconds:5.2f} s  {mbps:6.0f} MB/s (layer bytes)")
        blob = subprocess.run(["curl", "-sf", url], check=True, capture_output=True).stdout
        for _ in range(rounds):
            times["inflate-alone"].append(_inflate_alone(blob))
        del blob
        print("inflate alone", " ".join(f"{t:.2f}" for t in times["inflate-alone"]))
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", choices=["boot", "pull"])
    ap.add_argument("--base", type=Path, help="a tree whose pull_disk is timed beside ours")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as d:
        tmp = Path(d)
        boots = boot_runs(tmp, a.rounds) if a.only != "pull" else {}
        pulls = pull_runs(tmp, a.rounds, a.size_mib << 20, a.base) if a.only != "boot" else {}
    summary = {
        k: {m: round(statistics.median(r[m] for r in runs), 2) for m in runs[0]}
        for k, runs in boots.items()
    }
    med = {k: statistics.median(v) for k, v in pulls.items()}
    ratios = {
        f"{ours}_vs_{base}": round(med[base] / med[ours], 2)
        for ours in ("ours", "ours-none", "base", "base-none")
        for base in ("curl", "curl-file", "curl-sha256", "shell-gzip")
        if ours in med
    }
    report = {
        "boot_median_s": summary,
        "pull_median_s": {k: round(v, 2) for k, v in med.items()},
        "pull_speed_ratios": ratios,
    }
    print(json.dumps(report, indent=2))
    if a.json:
        a.json.write_text(json.dumps({"boots": boots, "pulls": pulls, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
