"""Warm invocation throughput and latency through the whole path, against bare ASGI.

Starts a daemon, deploys a no-op Python function, and drives it with wrk over
keep-alive connections; in the same run, a bare ASGI echo app on hypercorn
is driven the same way as the baseline. Prints JSON: req/s, p50, p99 per
concurrency level, and fgd's ratio to the baseline.

Each level is run twice: against a function whose instances take one request at a time
(`concurrent_num` 1, as many instances as connections) and one whose instances take 16.

Custom (a C bootstrap, through the invoke API) and HTTP functions (a small node server, through a
gateway route, against the same server hit directly) come from bench/_custom.py.

Usage: python bench/warm_invoke.py [--seconds 5] [--concurrency 1,16,64] [--runtimes python,custom]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _custom
from _common import Daemon, free_port, wait_http, wrk

NOOP = "def handler(event, context):\n    return {}\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--runtimes", default="python,custom", help="python, custom (Custom and http)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    runtimes = args.runtimes.split(",")

    port = free_port()
    baseline = subprocess.Popen([sys.executable, str(Path(__file__).parent / "baseline_app.py"), str(port)])
    wait_http(f"http://127.0.0.1:{port}/")
    daemon = Daemon()
    results: dict = {"benchmark": "warm_invoke", "seconds": args.seconds, "levels": {}}
    try:
        if "custom" in runtimes:
            # Issue 13: Custom (C bootstrap) and http (node server, against itself hit directly).
            results["custom_and_http"] = _custom.warm_invoke(levels, args.seconds, f"http://127.0.0.1:{port}/")
        if "python" in runtimes:
            daemon.deploy("noop1", NOOP, strategy_config={"concurrency": max(levels), "concurrent_num": 1})
            daemon.deploy("noop16", NOOP, strategy_config={"concurrency": max(levels), "concurrent_num": 16})
            for level in levels:
                base = wrk(f"http://127.0.0.1:{port}/", level, args.seconds)
                entry: dict = {"baseline": base}
                for name in ("noop1", "noop16"):
                    wrk(daemon.invoke_url(name), level, 1, daemon.token)  # warm up instances
                    fgd = wrk(daemon.invoke_url(name), level, args.seconds, daemon.token)
                    entry[f"concurrent_num_{name[4:]}"] = {
                        **fgd,
                        "ratio_req_per_s": round(fgd["req_per_s"] / base["req_per_s"], 3),
                        "ratio_p50": round(fgd["p50_ms"] / base["p50_ms"], 3),
                    }
                results["levels"][str(level)] = entry
    finally:
        daemon.stop()
        baseline.terminate()
        baseline.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
