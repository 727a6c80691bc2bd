"""What a pass over the whole catalog costs when nothing changed upstream, and the daemon's memory.

One job: measure, against the real parts the tests use, the three figures of the daemon issue:

1. A *fresh process* (`serve --once`) over the default catalog, everything already published:
   its wall time, requests per upstream host, and registry requests per entry, against the
   target "at most 1 + 2 x arches registry requests per entry".
2. *Later passes of one process* (`serve` at a short interval): per pass, requests per upstream
   metadata file (target: one, conditional, answered 304) and registry requests per entry
   (target: one manifest HEAD, the digest cache), and the pass's wall time.
3. The daemon's *RSS* after each pass, for `--passes` passes (default 100): idle RSS at the end
   (target: under 100 MiB) and its growth from pass to pass (target: none).

Setup: the upstream tree of tests/engine/test_catalog_publish.py (every distribution's real
metadata format, pointed at tiny real qcow2 images) served on loopback; Debian's
docker-registry behind the fault proxy of tests/support, used only to log every request
independently of the daemon; the catalog is published once first (`serve --once`). Requests are
counted on the servers, not by the daemon; the daemon's own `containerdisks_http_requests_total`
is read at the end and compared. Passes are told apart by polling `/status` between passes
(`passes` = k and no pass running); a pass missed by the poll is averaged over.

    python benchmarks/daemon_pass.py [--passes 100] [--interval 0.5] [--json daemon.json]

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine.test_catalog_publish import build_tree
from tests.support.cli import clean_env
from tests.support.fault_proxy import FaultProxy, Logged
from tests.support.registry import free_port, start_registry
from tests.support.upstream_server import RecordedRequest, UpstreamServer

NAMESPACE = "cd"


def progress(message: str) -> None:
    sys.stderr.write(f"[daemon_pass] {message}\n")
    sys.stderr.flush()


def env() -> dict[str, str]:
    out = clean_env()
    out["CONTAINERDISKS_INTERVAL_JITTER"] = "0"
    return out


def command(srv: UpstreamServer, registry: str, work: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "containerdisks",
        "serve",
        "--dry-run=false",
        "--source-registry",
        f"{registry}/{NAMESPACE}",
        "--log-format",
        "json",
        "--work-dir",
        str(work),
        "--results-file",
        str(work / "results.json"),
        *srv.mirror_args(),
        *flags,
    ]


def events(text: str, name: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def upstream_host(r: RecordedRequest) -> str:
    return r.path.split("/")[1]


def repository(e: Logged) -> str:
    parts = e.path.split("/")  # /v2/<namespace>/<name>/...
    return parts[3] if len(parts) > 3 and parts[2] == NAMESPACE else e.path


def kind(e: Logged) -> str:
    """`HEAD manifests`, `GET blobs`, `GET /v2/`: a registry request by method and object."""
    for what in ("manifests", "blobs", "tags"):
        if f"/{what}/" in e.path:
            return f"{e.method} {what}"
    return f"{e.method} {e.path}"


def catalog_entries(tree: Any) -> dict[str, int]:
    """Entry -> number of arches, for every entry the default catalog publishes."""
    return {key: len(want.images) for key, want in tree.wants.items()}


# -- 1. a fresh process ---------------------------------------------------------------------------


def fresh_pass(
    srv: UpstreamServer, proxy: FaultProxy, work: Path, entries: dict[str, int]
) -> dict[str, Any]:
    srv.clear()
    before = len(proxy.log)
    started = time.monotonic()
    done = subprocess.run(
        command(srv, proxy.host, work, "--once"),
        capture_output=True,
        text=True,
        timeout=600,
        env=env(),
        check=False,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"serve --once failed ({done.returncode}):\n{done.stderr[-3000:]}")
    log = proxy.log[before:]
    (finished,) = events(done.stderr, "pass_finished")
    by_repo = Counter(repository(e) for e in log)
    budget: Counter[str] = Counter()
    for key, arches in entries.items():
        budget[key.split(":")[0]] += 1 + 2 * arches
    over = {
        repo: {"requests": by_repo[repo], "budget": budget[repo]}
        for repo in sorted(budget)
        if by_repo[repo] > budget[repo]
    }
    per_method = Counter(kind(e) for e in log)
    return {
        "process_seconds": round(wall, 3),
        "pass_seconds": finished["seconds"],
        "entries": len(entries),
        "arches": sum(entries.values()),
        "upstream_requests": len(srv.requests),
        "upstream_by_host": dict(sorted(Counter(upstream_host(r) for r in srv.requests).items())),
        "registry_requests": len(log),
        "registry_budget": sum(budget.values()),
        "registry_by_kind": dict(sorted(per_method.items())),
        "repositories_over_budget": over,
        "published": finished["published"],
    }


# -- 2. and 3. one daemon, many passes -------------------------------------------------------------


def get_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def daemon_passes(
    srv: UpstreamServer,
    proxy: FaultProxy,
    work: Path,
    entries: dict[str, int],
    metadata: set[str],
    passes: int,
    interval: float,
) -> dict[str, Any]:
    port = free_port()
    log_path = work / "daemon.log"
    srv.clear()
    log_start = len(proxy.log)
    with log_path.open("w") as err:
        proc = subprocess.Popen(
            command(
                srv,
                proxy.host,
                work,
                "--interval",
                str(interval),
                "--listen",
                f"127.0.0.1:{port}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env(),
        )
    snapshots: dict[int, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + 60 + passes * (interval + 5)
        while max(snapshots, default=0) < passes and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                status = get_json(port, "/status")
            except OSError:
                time.sleep(0.02)
                continue
            k = status["passes"]
            if k >= 1 and status["current_pass"] is None and k not in snapshots:
                rss, hwm = rss_kib(proc.pid)
                snapshots[k] = {
                    "upstream": srv.requests,
                    "registry": len(proxy.log) - log_start,
                    "rss_kib": rss,
                    "hwm_kib": hwm,
                }
                if k % 10 == 0:
                    progress(f"pass {k}: RSS {rss / 1024:.1f} MiB")
            time.sleep(0.005)
        time.sleep(interval / 2)
        idle_rss, idle_hwm = rss_kib(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics_text = r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    if code != 0:
        raise SystemExit(f"serve did not stop cleanly ({code})")
    text = log_path.read_text()
    durations = {e["number"]: e["seconds"] for e in events(text, "pass_finished")}
    registry_log = proxy.log[log_start:]

    # Per later pass: requests between consecutive snapshots, averaged over the passes between.
    ks = sorted(k for k in snapshots if k >= 1)
    upstream_per_pass: list[float] = []
    registry_per_pass: list[float] = []
    for a, b in itertools.pairwise(ks):
        n = b - a
        up = snapshots[b]["upstream"][len(snapshots[a]["upstream"]) :]
        upstream_per_pass.append(len(up) / n)
        registry_per_pass.append((snapshots[b]["registry"] - snapshots[a]["registry"]) / n)
    later_upstream = snapshots[ks[-1]]["upstream"][len(snapshots[ks[0]]["upstream"]) :]
    conditional = sum(
        1
        for r in later_upstream
        if "If-None-Match" in r.headers or "If-Modified-Since" in r.headers
    )
    later_registry = registry_log[snapshots[ks[0]]["registry"] : snapshots[ks[-1]]["registry"]]
    rss_series = {k: snapshots[k]["rss_kib"] for k in ks}
    tail = [k for k in ks if k >= max(10, ks[0])]
    slope = 0.0
    if len(tail) >= 2:
        xs, ys = tail, [rss_series[k] for k in tail]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
    counted = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "containerdisks_http_requests_total":
                counted += s.value
    server_counted = len(srv.requests) + len(registry_log)
    later = [durations[k] for k in ks[1:] if k in durations]
    return {
        "passes": max(ks),
        "interval": interval,
        "snapshots": len(ks),
        "first_pass_seconds": durations.get(1),
        "later_pass_seconds_median": round(statistics.median(later), 4) if later else None,
        "later_pass_seconds_p95": round(sorted(later)[int(0.95 * (len(later) - 1))], 4)
        if later
        else None,
        "metadata_files": len(metadata),
        "entries": len(entries),
        "upstream_requests_per_later_pass": round(statistics.fmean(upstream_per_pass), 3),
        "upstream_later_conditional": f"{conditional}/{len(later_upstream)}",
        "upstream_later_statuses": dict(Counter(r.status for r in later_upstream)),
        "upstream_later_by_host_per_pass": {
            h: round(n / (ks[-1] - ks[0]), 3)
            for h, n in sorted(Counter(upstream_host(r) for r in later_upstream).items())
        },
        "registry_requests_per_later_pass": round(statistics.fmean(registry_per_pass), 3),
        "registry_later_kinds": dict(Counter(kind(e) for e in later_registry)),
        "rss_mib": {
            k: round(v / 1024, 1)
            for k, v in rss_series.items()
            if k in (ks[0], 10, 25, 50, 75, 100) or k == ks[-1]
        },
        "rss_slope_kib_per_pass_after_10": round(slope, 2),
        "idle_rss_mib": round(idle_rss / 1024, 1),
        "peak_rss_mib": round(idle_hwm / 1024, 1),
        "daemon_counted_requests": int(counted),
        "server_counted_requests": server_counted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="write all figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="daemon-pass-") as tmp:
        root = Path(tmp)
        progress("laying out the catalog's upstream tree (qemu-img)")
        tree = build_tree(root / "up", root / "disks")
        entries = catalog_entries(tree)
        work = root / "work"
        work.mkdir()
        with (
            start_registry(root / "registry") as reg,
            FaultProxy(reg.url) as proxy,
            UpstreamServer(root / "up") as srv,
        ):
            progress(f"publishing {len(entries)} entries once")
            seed = subprocess.run(
                command(srv, proxy.host, work, "--once"),
                capture_output=True,
                text=True,
                timeout=900,
                env=env(),
                check=False,
            )
            if seed.returncode != 0:
                raise SystemExit(f"seeding failed ({seed.returncode}):\n{seed.stderr[-3000:]}")
            progress("a fresh process, nothing changed")
            fresh = fresh_pass(srv, proxy, work, entries)
            progress(f"one daemon, {args.passes} passes every {args.interval}s")
            daemon = daemon_passes(
                srv, proxy, work, entries, tree.metadata, args.passes, args.interval
            )
    result = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "fresh": fresh,
        "daemon": daemon,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
