"""How long one scheduling decision takes with many instances of one function.

The pure scheduler (`fgd.scheduler`), timed in this process: N idle instances of one
function, then 2,000 decisions (acquire, then release of the instance it chose). The
baseline, measured in the same run on the same records, is the linear scan the per-function
index replaced (issue 15): `max` over the function's instances with a free slot.
Tiny and CPU-bound (about a second); prints JSON.

Usage: python bench/scheduler.py [--instances 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from fgd.scheduler import Quota, Scheduler

KEY = ("p", "default", "f")
DECISIONS = 2000


def filled(instances: int) -> Scheduler:
    """A scheduler holding `instances` idle instances of one function."""
    clock = iter(range(10**9)).__next__
    scheduler = Scheduler(lambda: float(clock()), 10**9)
    limits = Quota(-1, 1, 128, 10)
    for n in range(instances):
        scheduler.acquire(KEY, limits, f"s{n}")
        scheduler.started(KEY, f"i{n}")
    for n in range(instances):
        scheduler.release(f"i{n}")
    return scheduler


def decision_us(instances: int) -> dict:
    """p50 and max of one decision (acquire + release) with `instances` idle instances."""
    scheduler = filled(instances)
    limits = Quota(-1, 1, 128, 10)
    samples = []
    for n in range(DECISIONS):
        started = time.perf_counter()
        decision = scheduler.acquire(KEY, limits, f"r{n}")
        scheduler.release(decision.instance)
        samples.append((time.perf_counter() - started) * 1e6)
    return {"p50_us": round(statistics.median(samples), 2), "max_us": round(max(samples), 2)}


def linear_scan_us(instances: int) -> dict:
    """The replaced rule's scan alone, over the same records (it was one per decision)."""
    records = filled(instances)._functions[KEY].instances
    samples = []
    for _ in range(DECISIONS):
        started = time.perf_counter()
        free = [item for item in records.items() if item[1].busy < item[1].capacity]
        max(free, key=lambda item: (item[1].reserved, item[1].busy > 0, item[1].last_used))
        samples.append((time.perf_counter() - started) * 1e6)
    return {"p50_us": round(statistics.median(samples), 2), "max_us": round(max(samples), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=500)
    args = parser.parse_args()
    ours = decision_us(args.instances)
    baseline = linear_scan_us(args.instances)
    results = {
        "benchmark": "scheduler",
        "instances": args.instances,
        "decision": ours,
        "baseline_linear_scan": baseline,
        "target_p50_us": 20,
        "ratio_decision_to_linear_scan_p50": round(ours["p50_us"] / baseline["p50_us"], 3),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
