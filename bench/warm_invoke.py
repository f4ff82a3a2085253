"""Warm invocation throughput and latency through the whole path, against bare ASGI.

Starts a daemon, deploys a no-op Python function, and drives it with wrk over
keep-alive connections; in the same run, a bare ASGI echo app on hypercorn
is driven the same way as the baseline. Prints JSON: req/s, p50, p99 per
concurrency level, and fgd's ratio to the baseline.

Each level is run twice: against a function whose instances take one request at a time
(`concurrent_num` 1, as many instances as connections) and one whose instances take 16.

Issue 13: the same for a no-op Node.js function, against the same handler behind a bare node
`http` server (bench/_nodejs.py).

Usage: python bench/warm_invoke.py [--seconds 5] [--concurrency 1,16,64] [--runtimes python,nodejs]
(`--seconds 1 --concurrency 1` proves it runs without measuring anything worth keeping.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _nodejs
from _common import Daemon, free_port, wait_http, wrk

NOOP = "def handler(event, context):\n    return {}\n"


def run_levels(daemon: Daemon, base_url: str, names: list[str], levels: list[int], seconds: int) -> dict:
    """Per level: the baseline at `base_url`, then each function, with fgd's ratio to the baseline."""
    out: dict = {}
    for level in levels:
        base = wrk(base_url, level, seconds)
        entry: dict = {"baseline": base}
        for name in names:
            wrk(daemon.invoke_url(name), level, 1, daemon.token)  # warm up instances
            fgd = wrk(daemon.invoke_url(name), level, seconds, daemon.token)
            entry[f"concurrent_num_{name.rpartition('noop')[2]}"] = {
                **fgd,
                "ratio_req_per_s": round(fgd["req_per_s"] / base["req_per_s"], 3),
                "ratio_p50": round(fgd["p50_ms"] / base["p50_ms"], 3),
            }
        out[str(level)] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--runtimes", default="python,nodejs", help="comma-separated: python, nodejs")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    runtimes = args.runtimes.split(",")
    results: dict = {"benchmark": "warm_invoke", "seconds": args.seconds, "levels": {}}

    if "python" in runtimes:
        port = free_port()
        baseline = subprocess.Popen([sys.executable, str(Path(__file__).parent / "baseline_app.py"), str(port)])
        wait_http(f"http://127.0.0.1:{port}/")
        daemon = Daemon()
        try:
            for num in (1, 16):
                strategy = {"concurrency": max(levels), "concurrent_num": num}
                daemon.deploy(f"noop{num}", NOOP, strategy_config=strategy)
            results["levels"] = run_levels(
                daemon, f"http://127.0.0.1:{port}/", ["noop1", "noop16"], levels, args.seconds
            )
        finally:
            daemon.stop()
            baseline.terminate()
            baseline.wait()

    if "nodejs" in runtimes:
        # Issue 13: Node.js against a bare node http server running the same handler.
        if not _nodejs.available():
            results["nodejs"] = {"skipped": "no node on this machine (make installs it)"}
        else:
            port = free_port()
            baseline = _nodejs.warm_baseline(port)
            wait_http(f"http://127.0.0.1:{port}/")
            daemon = Daemon()
            try:
                for num in (1, 16):
                    strategy = {"concurrency": max(levels), "concurrent_num": num}
                    _nodejs.deploy(daemon, f"nodenoop{num}", strategy_config=strategy)
                names = ["nodenoop1", "nodenoop16"]
                results["nodejs"] = {
                    "levels": run_levels(daemon, f"http://127.0.0.1:{port}/", names, levels, args.seconds)
                }
            finally:
                daemon.stop()
                baseline.terminate()
                baseline.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
