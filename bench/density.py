"""How many idle warm instances a node holds, and what they cost.

Starts N warm instances of a no-op function (as reserved instances, so they
stay), then reports the time to start them all, how many processes an idle
instance is, the USS of one instance's processes (mean over all; target
2.5 MiB) and of its PID 1 alone, the
daemon's RSS, and the scheduler's decision time with N instances (the pure
scheduler, timed in this process). The baseline, measured in the same run,
is the USS of a bare `python3 -c 'import time; time.sleep(60)'` process.

Usage: python bench/density.py [--instances 500]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=500)
    args = parser.parse_args()
    count = args.instances
    results: dict = {"benchmark": "density", "instances": count}
    # One function holds them all: its share of the budget is the whole of it.
    daemon = Daemon(f"[scheduler]\nmemory_budget_mb = {count * 128 + 1024}\nfunction_memory_share = 1.0\n")
    try:
        daemon.deploy("idle", "def handler(event, context):\n    return {}\n", strategy_config={"concurrency": count})
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
        uss, processes, heads = [], [], []
        for zygote in psutil.Process(daemon.process.pid).children():
            for head in zygote.children():
                tree = [head, *head.children(recursive=True)]
                sizes = [p.memory_full_info().uss for p in tree]
                uss.append(sum(sizes))
                heads.append(sizes[0])
                processes.append(len(tree))
        results["processes_per_instance"] = round(statistics.fmean(processes), 2) if processes else None
        # PID 1 of the sandbox (the zygote's child) alone; the rest is the worker.
        results["pid1_uss_mean_kib"] = round(statistics.fmean(heads) / 1024) if heads else None
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
