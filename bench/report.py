"""Run every benchmark, gather their figures into bench/results/latest.json, print one table.

A benchmark is any script in bench/ that prints its results as one JSON object on
standard output (its last output; progress goes to standard error). Scripts whose
name starts with "_" are helpers; the few others that are not benchmarks are
listed in NOT_BENCHMARKS. A new bench/<name>.py, or a new figure in an existing
one, shows up in the report without a change here.

The report holds the machine (CPU count and model, kernel, Python), the commit,
and each benchmark's JSON as it printed it. The table flattens each one to
dotted names; ratios (names starting with "ratio") are what to read first.

Usage: python bench/report.py [NAME ...] [--args NAME=ARGS ...] [--output PATH]
  NAME            only these benchmarks (file names without .py), in this order
  --args NAME=ARGS  extra arguments for one benchmark, e.g. --args "async_queue=--events 50"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
# Scripts in bench/ that are not benchmarks of the report.
NOT_BENCHMARKS = {
    "report": "this runner",
    "baseline_app": "the bare ASGI app warm_invoke.py starts as its baseline",
    "baseline_h11": "the bare trio + h11 echo server warm_invoke.py starts as its baseline",
    "baseline_h11_hop": "the same with a hop to a worker process, warm_invoke.py's third baseline",
    "baseline_fgd_server": "the ASGI echo on fgd's own server, for invoke_profile.py --servers",
    "soak": "a 30-minute leak hunt that passes or fails; run it on its own",
}


def benchmarks() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_") and p.stem not in NOT_BENCHMARKS)


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model,
        "kernel": platform.release(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "memory_mb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
    }


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(BENCH), "status", "--porcelain"], capture_output=True, text=True)
        return head + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def last_json_object(text: str) -> dict:
    """The last JSON object in a benchmark's output (indented or not)."""
    decoder = json.JSONDecoder()
    lines = text.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            try:
                found, _ = decoder.raw_decode("\n".join(lines[start:]))
            except ValueError:
                continue
            if isinstance(found, dict):
                return found
    raise ValueError("no JSON object in its output")


def run(name: str, extra: list[str]) -> dict:
    """Run one benchmark (its progress and errors go to our standard error as they come)."""
    print(f"== {name} {' '.join(extra)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *extra], stdout=subprocess.PIPE, text=True, check=False
    )
    seconds = round(time.monotonic() - started, 1)
    if process.returncode != 0:
        return {"error": f"exited with {process.returncode}", "output_tail": process.stdout[-2000:], "run_s": seconds}
    try:
        figures = last_json_object(process.stdout)
    except ValueError as exc:
        return {"error": str(exc), "output_tail": process.stdout[-2000:], "run_s": seconds}
    return {**figures, "run_s": seconds}


def flatten(value: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list):
        if all(isinstance(item, (int, float)) for item in value):
            return [(prefix, ", ".join(str(item) for item in value))]
        rows = []
        for index, item in enumerate(value):
            rows += flatten(item, f"{prefix}[{index}]")
        return rows
    return [(prefix, value)]


def table(report: dict) -> str:
    rows = [("benchmark", "figure", "value")]
    for name, figures in report["benchmarks"].items():
        for key, value in flatten(figures):
            if key in ("benchmark", "output_tail"):
                continue
            leaf = key.rsplit(".", 1)[-1]
            mark = " <" if leaf.startswith("ratio") else ""
            rows.append((name, key, f"{value}{mark}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)]
    lines = [" | ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    head = report["machine"]
    title = (
        f"fgd {report['commit']} on {head['cpu_count']} CPUs ({head['cpu_model'] or head['machine']}), "
        f"kernel {head['kernel']}, Python {head['python']}; '<' marks ratios to the same-run baselines"
    )
    return "\n".join([title, *lines])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--args", action="append", default=[], metavar="NAME=ARGS")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    available = benchmarks()
    names = args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are: {', '.join(available)}")
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, _, text = item.partition("=")
        extra[name] = shlex.split(text)
    report = {
        "machine": machine(),
        "commit": commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arguments": {name: extra[name] for name in names if name in extra},
        "benchmarks": {},
    }
    for name in names:
        report["benchmarks"][name] = run(name, extra.get(name, []))
        # Written after each one: a benchmark that fails late leaves the others' figures.
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten to {args.output}", file=sys.stderr)
    failed = [name for name, figures in report["benchmarks"].items() if "error" in figures]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
