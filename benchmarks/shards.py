"""Shards for CI jobs: what 1, 2 and 4 shard processes cost and save on a 500-entry catalog.

One job: measure, against the real parts the tests use, the figures of issue 24's first item:

1. *Publish pass* (everything new): N `images push --shard I/N` processes started at once, for
   N = 1, 2, 4, each into its own fresh namespace of one registry: the wall time until the last
   exits, the requests the registry and the upstream served, each process's own wall time.
2. *Balance*: the arches each process actually took (its `shard` log line), the most loaded
   shard's arches over the mean (target <= 1.1).
3. *No-change pass, fresh processes* (CI jobs): the same N processes again, nothing changed:
   registry requests by kind, against the unsharded run's (sharding must add nothing but each
   process's set-up).
4. *No-change pass, daemons* (`serve --shard I/N`): N daemons whose first pass is done, then a
   pass started in all of them at once (SIGHUP) and waited for, `--daemon-passes` times: registry
   requests per pass across all shards together (target: one manifest HEAD per entry).

Setup: tests/support/synthetic.py's catalog (`--entries` entries `s000:1`...; arches cycling
1, 2, 3; each arch a distinct 1 MiB qcow2 made by qemu-img) on a loopback upstream; Debian's
docker-registry behind the tests' fault proxy, used only to log every request. Requests are
counted on the servers.

    python benchmarks/shards.py [--entries 500] [--shards 1,2,4] [--workers 4]
                                [--daemon-passes 3] [--json shards.json]

The figures go to stdout as JSON, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.daemon_pass import env, get_json, kind  # the same environment and counting
from containerdisks.engine.shards import assign, imbalance
from tests.support.fault_proxy import FaultProxy
from tests.support.loopback import free_port
from tests.support.registry import start_registry
from tests.support.synthetic import synthetic_catalog
from tests.support.upstream_server import UpstreamServer


def progress(message: str) -> None:
    sys.stderr.write(f"[shards] {message}\n")
    sys.stderr.flush()


def argv(
    command: list[str], srv: UpstreamServer, target: str, config: Path, work: Path, *extra: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "containerdisks",
        *command,
        "--dry-run=false",
        "--config",
        str(config),
        "--source-registry",
        target,
        "--log-format",
        "json",
        "--work-dir",
        str(work),
        "--results-file",
        str(work / "results.json"),
        *srv.mirror_args(),
        *extra,
    ]


def start(command: list[str], *, stderr: int) -> subprocess.Popen[str]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env())


def shard_entries(stderr: str) -> list[str]:
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "shard":
                entries: list[str] = event["entries"]
                return entries
    raise SystemExit("no `shard` log line")


def run_jobs(
    n: int,
    srv: UpstreamServer,
    proxy: FaultProxy,
    target: str,
    config: Path,
    root: Path,
    workers: int,
) -> dict[str, Any]:
    """N `images push --shard I/N` processes at once; their wall times and the requests."""
    log_start, up_start = len(proxy.log), len(srv.requests)
    started = time.monotonic()
    procs = []
    for i in range(n):
        work = root / f"work-{n}-{i}"
        work.mkdir(exist_ok=True)
        command = argv(["images", "push"], srv, target, config, work, "--shard", f"{i}/{n}")
        procs.append(start([*command, "--workers", str(workers)], stderr=subprocess.PIPE))
    walls, stderrs = [], []
    for p in procs:
        _, err = p.communicate(timeout=3600)
        walls.append(round(time.monotonic() - started, 2))
        stderrs.append(err)
        if p.returncode != 0:
            raise SystemExit(f"shard exited {p.returncode}:\n{err[-3000:]}")
    wall = time.monotonic() - started
    log = proxy.log[log_start:]
    return {
        "wall_seconds": round(wall, 2),
        "process_wall_seconds": walls,
        "registry_requests": len(log),
        "registry_by_kind": dict(sorted(Counter(kind(e) for e in log).items())),
        "upstream_requests": len(srv.requests) - up_start,
        "shard_entries": [shard_entries(err) for err in stderrs],
    }


def wait_passes(ports: list[int], procs: list[subprocess.Popen[str]], k: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = 0
        for port, proc in zip(ports, procs, strict=True):
            if proc.poll() is not None:
                raise SystemExit(f"serve exited {proc.returncode}")
            try:
                status = get_json(port, "/status")
            except OSError:
                continue
            done += status["passes"] >= k and status["current_pass"] is None
        if done == len(ports):
            return
        time.sleep(0.05)
    raise SystemExit(f"the daemons did not finish pass {k}")


def run_daemons(
    n: int,
    srv: UpstreamServer,
    proxy: FaultProxy,
    target: str,
    config: Path,
    root: Path,
    workers: int,
    passes: int,
) -> dict[str, Any]:
    """N `serve --shard I/N` daemons: after their first pass, `passes` passes started at once."""
    ports = [free_port() for _ in range(n)]
    procs = []
    for i, port in enumerate(ports):
        work = root / f"daemon-{n}-{i}"
        work.mkdir(exist_ok=True)
        command = argv(["serve"], srv, target, config, work, "--shard", f"{i}/{n}")
        extra = ["--workers", str(workers), "--interval", "3600", "--listen", f"127.0.0.1:{port}"]
        procs.append(start([*command, *extra], stderr=subprocess.DEVNULL))
    per_pass = []
    try:
        wait_passes(ports, procs, 1)
        for k in range(2, passes + 2):
            log_start = len(proxy.log)
            started = time.monotonic()
            for p in procs:
                p.send_signal(signal.SIGHUP)
            wait_passes(ports, procs, k)
            wall = time.monotonic() - started
            log = proxy.log[log_start:]
            per_pass.append(
                {
                    "wall_seconds": round(wall, 2),
                    "registry_requests": len(log),
                    "registry_by_kind": dict(sorted(Counter(kind(e) for e in log).items())),
                }
            )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    return {"passes": per_pass}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--workers", type=int, default=4, help="--workers of every process")
    parser.add_argument("--daemon-passes", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write all figures here")
    args = parser.parse_args()
    counts = [int(c) for c in args.shards.split(",")]
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "entries": args.entries,
        "workers_per_process": args.workers,
    }
    with tempfile.TemporaryDirectory(prefix="shards-") as tmp:
        root = Path(tmp)
        progress(f"making {args.entries} entries' images (qemu-img)")
        t0 = time.monotonic()
        weights = synthetic_catalog(root / "up", root / "catalog.yaml", args.entries, root / "d")
        progress(f"{sum(weights.values())} images in {time.monotonic() - t0:.0f} s")
        result["arches"] = sum(weights.values())
        result["balance_by_function"] = {
            n: round(imbalance(assign(weights.items(), n), weights), 4) for n in range(1, 9)
        }
        config = root / "catalog.yaml"
        with (
            start_registry(root / "registry") as reg,
            FaultProxy(reg.url) as proxy,
            UpstreamServer(root / "up") as srv,
        ):
            for n in counts:
                target = f"{proxy.host}/n{n}"
                progress(f"{n} shard(s): publish pass")
                publish = run_jobs(n, srv, proxy, target, config, root, args.workers)
                taken = publish.pop("shard_entries")
                per_shard = [sum(weights[k] for k in keys) for keys in taken]
                held = Counter(k for keys in taken for k in keys)
                if sorted(held) != sorted(weights) or set(held.values()) != {1}:
                    raise SystemExit(f"{n} shards did not take every entry once: {held}")
                progress(f"{n} shard(s): no-change pass, fresh processes")
                fresh = run_jobs(n, srv, proxy, target, config, root, args.workers)
                fresh.pop("shard_entries")
                progress(f"{n} shard(s): {args.daemon_passes} no-change passes of daemons")
                daemons = run_daemons(
                    n, srv, proxy, target, config, root, args.workers, args.daemon_passes
                )
                mean = sum(per_shard) / n
                result[f"shards_{n}"] = {
                    "arches_per_shard": per_shard,
                    "max_over_mean": round(max(per_shard) / mean, 4),
                    "publish": publish,
                    "no_change_fresh": fresh,
                    "no_change_daemons": daemons,
                }
                progress(json.dumps({"shards": n, "publish_wall": publish["wall_seconds"]}))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
