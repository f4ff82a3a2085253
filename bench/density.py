"""How many idle warm instances a node holds, and what they cost.

Starts N warm instances of a no-op function (as reserved instances, so they
stay), then reports the time to start them all, how many processes an idle
instance is, the USS of one instance's processes (mean over all; target
2.5 MiB), of its PID 1 alone (and what PID 1 runs: fgd-pid1, the native
reaper, or python when it fell back) and of the worker, where the worker's
private pages are (Private_Dirty by mapping, mean over a sample: the Python
heap's arenas, the interpreter's data segment, malloc's heap), the daemon's
RSS, and the scheduler's decision time with N instances (the pure scheduler,
timed in this process). The baseline, measured in the same run, is the USS of
a bare `python3 -c 'import time; time.sleep(60)'` process.

Usage: python bench/density.py [--instances 500] [--runtime Python3.12]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import Daemon
from scheduler import decision_us as scheduler_decision_us


def reserved_running(daemon: Daemon) -> int:
    answer = daemon.request("GET", "/functions/reservedinstances")
    return sum(row["running"] for row in answer["body"]["reservedinstances"])


# Where a worker's private pages are: smaps mapping names grouped (the interpreter's own library
# by its name, so that any Python version's shows as one group).
SAMPLE_WORKERS = 50


def mapping_group(name: str) -> str:
    if name in ("[heap]", "[stack]"):
        return name
    if not name:
        return "anonymous (Python's arenas, mmap'd buffers)"
    base = name.rsplit("/", 1)[-1]
    if base.startswith("libpython"):
        return "libpython (its data: static objects, runtime state)"
    return "other libraries and modules"


def private_dirty_by_mapping(pid: int) -> dict[str, int]:
    """KiB of Private_Dirty in each mapping group of process `pid`."""
    groups: collections.Counter[str] = collections.Counter()
    name = ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if not first.endswith(":"):
                fields = line.split(maxsplit=5)
                name = fields[5].strip() if len(fields) > 5 else ""
            elif first == "Private_Dirty:":
                groups[mapping_group(name)] += int(line.split()[1])
    return dict(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--runtime", help="the function's runtime (default: the daemon's own Python)")
    args = parser.parse_args()
    count = args.instances
    results: dict = {"benchmark": "density", "instances": count}
    runtime = {"runtime": args.runtime} if args.runtime else {}
    # One function holds them all: its share of the budget is the whole of it.
    daemon = Daemon(f"[scheduler]\nmemory_budget_mb = {count * 128 + 1024}\nfunction_memory_share = 1.0\n")
    try:
        daemon.deploy(
            "idle", "def handler(event, context):\n    return {}\n", strategy_config={"concurrency": count}, **runtime
        )
        rss_before = psutil.Process(daemon.process.pid).memory_info().rss
        started = time.monotonic()
        daemon.request("PUT", "/functions/idle/reservedinstances", {"count": count})
        while (running := reserved_running(daemon)) < count and time.monotonic() - started < 600:
            print(f"{running} of {count} running", file=sys.stderr)
            time.sleep(0.5)
        results["seconds_to_start_all"] = round(time.monotonic() - started, 1)
        results["running"] = reserved_running(daemon)
        time.sleep(2)
        # Each instance is a child of its zygote (PID 1 of its sandbox) and what runs under it.
        # (The runtime's few pooled, not yet specialised instances are counted among them.)
        uss, processes, heads, workers = [], [], [], []
        pid1_runs: collections.Counter[str] = collections.Counter()
        dirty: collections.Counter[str] = collections.Counter()
        sampled = 0
        for zygote in psutil.Process(daemon.process.pid).children():
            for head in zygote.children():
                tree = [head, *head.children(recursive=True)]
                sizes = [p.memory_full_info().uss for p in tree]
                uss.append(sum(sizes))
                heads.append(sizes[0])
                workers.append(sum(sizes[1:]))
                processes.append(len(tree))
                pid1_runs[head.name()] += 1
                if len(tree) > 1 and sampled < SAMPLE_WORKERS:
                    dirty.update(private_dirty_by_mapping(tree[1].pid))
                    sampled += 1
        results["processes_per_instance"] = round(statistics.fmean(processes), 2) if processes else None
        # PID 1 of the sandbox (the zygote's child) alone; the rest is the worker.
        results["pid1_uss_mean_kib"] = round(statistics.fmean(heads) / 1024) if heads else None
        results["pid1_runs"] = dict(pid1_runs)
        results["worker_uss_mean_kib"] = round(statistics.fmean(workers) / 1024) if workers else None
        results["worker_private_dirty_kib"] = {group: round(kib / sampled) for group, kib in dirty.most_common()}
        results["instance_uss_mean_kib"] = round(statistics.fmean(uss) / 1024) if uss else None
        results["target_instance_uss_kib"] = 2560
        results["daemon_rss_mb"] = round(psutil.Process(daemon.process.pid).memory_info().rss / 2**20, 1)
        results["daemon_rss_growth_mb"] = round(
            (psutil.Process(daemon.process.pid).memory_info().rss - rss_before) / 2**20, 1
        )
        with urllib.request.urlopen(f"{daemon.url}/healthz") as response:
            results["healthz_instances"] = json.loads(response.read())["instances"]
    finally:
        daemon.stop()
    results["scheduler_decision"] = scheduler_decision_us(count)
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(1)
    results["baseline_bare_python_uss_kib"] = psutil.Process(bare.pid).memory_full_info().uss // 1024
    bare.kill()
    results["ratio_instance_to_bare_python"] = (
        round(results["instance_uss_mean_kib"] / results["baseline_bare_python_uss_kib"], 3)
        if results["instance_uss_mean_kib"]
        else None
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
