"""How long `containerdisks --help` and `catalog` take to start, beside `python3 -c pass`.

One job: the wall time of a fresh process for the commands that should cost no more than
their flags (issue 21's target: `containerdisks --help` at most 0.15 s), measured beside the
bare interpreter, and optionally beside another checkout (`--before`, e.g. installed from a
`git worktree add --detach DIR main`) in the same run. Every variant runs once per round, in an
order rotated from round to round (interleaved, so a busy neighbour slows all alike); the
figures are medians (and min/max) over `--runs` rounds.

Variants: `python3 -c pass` (this interpreter); `containerdisks --help` and `containerdisks
catalog` through the console script of each environment measured: `--after` (default: the
`containerdisks` next to this interpreter) and `--before`. Give both environments the same
packages (e.g. `pip install -e .` without the test extras in each): with `rich` installed,
structlog imports it, which alone costs `catalog` tens of milliseconds.

    python benchmarks/startup.py [--runs 20] [--before BEFORE/.venv/bin/containerdisks]
        [--after AFTER/.venv/bin/containerdisks] [--json out.json]

The table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def variants(after: Path, before: Path | None) -> dict[str, list[str]]:
    out = {"python3 -c pass": [sys.executable, "-c", "pass"]}
    for name, script in [("after", after)] + ([("before", before)] if before else []):
        for args in (["--help"], ["catalog"]):
            out[f"{name}: containerdisks {' '.join(args)}"] = [str(script), *args]
    return out


def measure(runs: int, after: Path, before: Path | None) -> dict[str, list[float]]:
    todo = variants(after, before)
    names = list(todo)
    times: dict[str, list[float]] = {n: [] for n in names}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERDISKS_")}
    for r in range(runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            started = time.perf_counter()
            subprocess.run(todo[name], env=env, cwd=HERE, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--after",
        type=Path,
        default=Path(sys.executable).parent / "containerdisks",
        help="the console script measured (default: next to this interpreter)",
    )
    parser.add_argument("--before", type=Path, help="another console script, measured beside")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    times = measure(args.runs, args.after, args.before)
    bare = statistics.median(times["python3 -c pass"])
    rows = []
    width = max(len(n) for n in times)
    print(f"{'variant':<{width}}  median s  min s   max s   minus python3 -c pass")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "median": med, "min": min(ts), "max": max(ts)})
        print(f"{name:<{width}}  {med:8.3f}  {min(ts):6.3f}  {max(ts):6.3f}  {med - bare:+.3f}")
    if args.json:
        figures = {
            "runs": args.runs,
            "python": sys.version.split()[0],
            "after": str(args.after),
            "before": str(args.before),
            "rows": rows,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
