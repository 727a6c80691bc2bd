"""The one-shot no-change pass: `images push` of one entry that is already published, beside medius.

One job: time a fresh `images push --dry-run=false --focus fedora:40` process that has nothing
to do (the tag already holds what the upstream offers), ours and medius's, side by side in one
run, with `python3 -c pass` as the interpreter's own floor. Issue 21's target: ours at most
1.5x medius's wall time.

Setup (Fedora mode of `push_throughput.py`, reused from it): a small synthetic image served as
Fedora 40's Cloud Base qcow2 with a `releases.json`, by one HTTPS server on 127.0.0.1:443 with a
throw-away CA; `getfedora.org` and `download.fedoraproject.org` mapped to 127.0.0.1 in
`/etc/hosts` for the run and the file written back afterwards (also on an error, SIGINT,
SIGTERM). One fresh registry; medius pushes into `ns-medius/fedora:40`, we into
`ns-ours/fedora:40` (and `--alt-repo`, another source tree, into `ns-alt/...`), once, untimed.
Then every variant runs its push again `--passes` times, interleaved, the order rotated each
round: each is a no-change pass. Each tool keeps its work dir and results file from its first
push, as a CronJob's pod would not (a fresh pod has neither): `--fresh-work-dir` gives each pass
an empty one instead. Wall time, CPU time (ours and medius's, `os.wait4`), medians, and the
median of the per-round ratio to medius.

    python benchmarks/nochange.py --medius PATH/TO/medius [--passes 15] [--alt-repo DIR]
        [--json benchmarks/results/nochange-DATE.json] [--importtime FILE]

`--cprofile FILE` profiles one more no-change pass and one first push of ours under cProfile
(`FILE-nochange`, `FILE-push`; read them with `python -m pstats`). `--importtime FILE` also
runs our pass once more under `python -X importtime` and writes the cumulative import times
(top 40) to FILE. The variants `import: ...` (in the same rounds) are
`python -c "import gc; gc.disable(); import X"` from our tree: what importing the third-party
stacks and our command modules alone costs (the collector off, as our entry point has it during
start-up), so the pass's CPU can be split into interpreter, imports and the rest.

Needs root (port 443, /etc/hosts). Run from the repository root with an interpreter whose
environment has our package without the test extras (a production install: with `rich`
installed, structlog imports it), e.g. `python3 -m venv /tmp/prod && /tmp/prod/bin/pip install
-e . && /tmp/prod/bin/python benchmarks/nochange.py ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import push_throughput as pt  # the Fedora-mode setup lives there

# What the `import: ...` variants import (see the docstring).
IMPORTS = {
    "aiohttp": "aiohttp",
    "pydantic + pydantic-settings": "pydantic, pydantic_settings",
    "structlog": "structlog",
    "yaml": "yaml",
    "all third-party": "aiohttp, pydantic, pydantic_settings, structlog, yaml",
    "our push command": "containerdisks.commands.push, containerdisks.commands.context",
}


def _run(cmd: Sequence[str], env: dict[str, str], cwd: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `cmd`; raises with its output's tail on a non-zero exit."""
    with out.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=sink, stderr=sink)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = " | ".join(out.read_text(errors="replace").strip().splitlines()[-3:])
        raise RuntimeError(f"{cmd[0]} exit {code}: {tail}")
    return seconds, usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--medius", type=Path, help="a medius binary (skipped when absent)")
    parser.add_argument("--passes", type=int, default=15, help="no-change passes per variant")
    parser.add_argument("--alt-repo", type=Path, help="another source tree, as variant `alt`")
    parser.add_argument("--size", type=pt.parse_size, default=8 << 20, help="image size (8MiB)")
    parser.add_argument("--fresh-work-dir", action="store_true", help="empty work dir per pass")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--importtime", type=Path, help="write our pass's import times here")
    parser.add_argument(
        "--cprofile",
        type=Path,
        help="also profile one no-change pass and one first push (repository ns-profiled) of "
        "ours under cProfile: FILE-nochange and FILE-push, read with `python -m pstats`",
    )
    args = parser.parse_args(argv)
    problem = pt.medius_problem(args.medius.resolve() if args.medius else None)
    if problem and args.medius is not None:
        print(f"medius variant skipped: {problem}", file=sys.stderr)
    if os.geteuid() != 0:
        parser.error("needs root (port 443 and /etc/hosts)")
    medius = None if problem else args.medius.resolve()
    trees = {"ours": pt.REPO_ROOT}
    if args.alt_repo:
        trees["alt"] = args.alt_repo.resolve()
    ns = argparse.Namespace(
        tmp_dir=None, size=args.size, seed=5, medius=Path("/bin/true"), ref=None,
        repo=pt.REPO_ROOT, alt_repo=trees.get("alt"), commit=None, run_timeout=120,
        profile=None, wait_idle=0, no_change=0,
    )  # fmt: skip
    started = dt.datetime.now(dt.UTC)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with pt.bench_env(ns) as bench:
        tmp = bench.tmp
        registry = pt.Registry(bench.registry_config, tmp / "registry", tmp / "registry.log")
        try:
            env = bench._env()
            cmds: dict[str, tuple[list[str], dict[str, str], Path]] = {}
            for name, tree in trees.items():
                work = tmp / name
                (work / "results").mkdir(parents=True)
                cmd = [
                    sys.executable, "-m", "containerdisks", "images", "push", "--dry-run=false",
                    "--focus", "fedora:40", "--config", str(tmp / "fedora.yaml"),
                    "--source-registry", f"{registry.host}/ns-{name}",
                    "--work-dir", str(work / "work"), "--log-format", "json",
                    "--results-file", str(work / "results" / "results.json"),
                ]  # fmt: skip
                cmds[name] = (cmd, {**env, "PYTHONPATH": str(tree / "plugins")}, tree)
            if medius is not None:
                work = tmp / "medius"
                (work / "results").mkdir(parents=True)
                cmd = [
                    str(medius), "images", "push", "--dry-run=false", "--focus", "fedora:40",
                    "--source-registry", f"{registry.host}/ns-medius", "--insecure-skip-tls",
                    "--results-file", str(work / "results" / "results.json"),
                ]  # fmt: skip
                cmds["medius"] = (cmd, {**env, "HOME": str(work)}, work)
            cmds["python3 -c pass"] = ([sys.executable, "-c", "pass"], env, tmp)
            ours_env = cmds["ours"][1]
            for label, modules in IMPORTS.items():
                code = f"import gc; gc.disable(); import {modules}"
                cmds[f"import: {label}"] = ([sys.executable, "-c", code], ours_env, pt.REPO_ROOT)
            for name, (cmd, e, cwd) in cmds.items():
                seconds, _ = _run(cmd, e, cwd, tmp / f"{name}-push.txt")
                pt.log(f"{name}: first push {seconds:.2f} s")
            names = list(cmds)
            for rnd in range(args.passes):
                shift = rnd % len(names)
                for name in names[shift:] + names[:shift]:
                    cmd, e, cwd = cmds[name]
                    if args.fresh_work_dir and "--work-dir" in cmd:
                        shutil.rmtree(cmd[cmd.index("--work-dir") + 1], ignore_errors=True)
                    out = tmp / f"{name}-{rnd}.txt"
                    seconds, used = _run(cmd, e, cwd, out)
                    if name in trees:
                        text = out.read_text()
                        if "up-to-date" not in text or '"build"' in text:
                            raise RuntimeError(f"{name}: pass {rnd} was not a no-change pass")
                    times.setdefault(name, []).append(seconds)
                    cpu.setdefault(name, []).append(used)
                shown = [n for n in names if not n.startswith("import: ")]
                pt.log(f"round {rnd + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}" for n in shown))
            if args.importtime:
                cmd, e, cwd = cmds["ours"]
                res = subprocess.run(
                    [cmd[0], "-X", "importtime", *cmd[1:]],
                    env=e, cwd=cwd, capture_output=True, text=True, check=True,
                )  # fmt: skip
                rows = []
                for line in res.stderr.splitlines():
                    if line.startswith("import time:") and "|" in line:
                        _, cum, name = line[len("import time:") :].split("|")
                        with contextlib.suppress(ValueError):
                            rows.append((int(cum), name.rstrip()))
                rows.sort(reverse=True)
                args.importtime.write_text(
                    "".join(f"{c / 1000:8.1f} ms {n}\n" for c, n in rows[:40])
                )
            if args.cprofile:
                cmd, e, cwd = cmds["ours"]
                first = [a.replace("/ns-ours", "/ns-profiled") for a in cmd[1:]]
                for what, rest in (("nochange", cmd[1:]), ("push", first)):
                    out = args.cprofile.resolve().with_name(f"{args.cprofile.name}-{what}")
                    subprocess.run(
                        [cmd[0], "-m", "cProfile", "-o", str(out), *rest],
                        env=e, cwd=cwd, capture_output=True, check=True,
                    )  # fmt: skip
        finally:
            registry.stop()
    summary: dict[str, dict[str, float | None]] = {}
    for name, secs in times.items():
        row: dict[str, float | None] = {
            "seconds_median": statistics.median(secs),
            "seconds_min": min(secs),
            "cpu_seconds_median": statistics.median(cpu[name]),
        }
        if "medius" in times:
            ratios = [a / b for a, b in zip(secs, times["medius"], strict=True)]
            row["x_medius_median"] = statistics.median(ratios)
        summary[name] = row
    print(f"\nno-change pass, {args.passes} rounds, {started:%Y-%m-%d %H:%M} UTC\n")
    print("| variant | s (median) | s (min) | CPU s (median) | x medius (median of rounds) |")
    print("|---|---|---|---|---|")
    for name, row in summary.items():
        ratio = row.get("x_medius_median")
        print(
            f"| {name} | {row['seconds_median']:.3f} | {row['seconds_min']:.3f} | "
            f"{row['cpu_seconds_median']:.3f} | {'-' if ratio is None else f'{ratio:.2f}'} |"
        )
    if args.json:
        doc = {
            "started": started.isoformat(timespec="seconds"),
            "git": pt._git_head(),
            "machine": pt._machine(),
            "load_before": os.getloadavg(),
            "passes": args.passes,
            "fresh_work_dir": args.fresh_work_dir,
            "trees": {k: str(v) for k, v in trees.items()},
            "medius": str(medius) if medius else None,
            "summary": summary,
            "seconds": times,
            "cpu_seconds": cpu,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
