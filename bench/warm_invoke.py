"""Warm invocation throughput and latency through the whole path, against two bare servers.

Starts a daemon, deploys a no-op Python function, and drives it with wrk over keep-alive
connections. In the same run, two baselines are driven the same way: a bare ASGI echo app on
hypercorn (bench/baseline_app.py, the server fgd used before issue 15) and a bare trio + h11
echo server (bench/baseline_h11.py, the floor of fgd's own server). A third, the same h11 server
with one hop per request to a worker process that echoes it (bench/baseline_h11_hop.py), is the
floor of any design that runs functions in processes of their own. Prints JSON: req/s, p50
and p99 per connection count, and fgd's ratios to each baseline (req/s: higher is better;
p50 and p99: lower is better). With each figure, the CPU the server process spent per request
(`server_cpu_us_per_request`, the daemon alone for fgd: not its instances), and its ratio
(`cpu_per_request`, lower is better): it moves far less than req/s when the machine is busy.

Each level is run twice: against a function whose instances take one request at a time
(`concurrent_num` 1, as many instances as connections) and one whose instances take 16.

Issue 15's targets, at 16 connections: req/s >= 1.5x hypercorn and >= 0.5x h11, p99 <= 10 ms;
at 1 connection: p50 <= 0.6x hypercorn's.

Custom (a C bootstrap, through the invoke API) and HTTP functions (a small node server, through a
gateway route, against the same server hit directly) come from bench/_custom.py.

Issue 13: a no-op Node.js function, against the same handler behind a bare node `http` server
(bench/_nodejs.py).

Usage: python bench/warm_invoke.py [--seconds 5] [--concurrency 1,16,64] [--runtimes python,nodejs,custom]
(`--seconds 1 --concurrency 1` proves it runs without measuring anything worth keeping.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _custom
import _nodejs
from _common import Daemon, free_port, wait_http, wrk

NOOP = "def handler(event, context):\n    return {}\n"
BASELINES = {"hypercorn": "baseline_app.py", "h11": "baseline_h11.py", "h11_hop": "baseline_h11_hop.py"}


def ratios(fgd: dict, base: dict) -> dict:
    return {
        "req_per_s": round(fgd["req_per_s"] / base["req_per_s"], 3) if base["req_per_s"] else None,
        "p50": round(fgd["p50_ms"] / base["p50_ms"], 3) if base["p50_ms"] else None,
        "p99": round(fgd["p99_ms"] / base["p99_ms"], 3) if base["p99_ms"] else None,
        # The server's own CPU per request (daemon vs baseline process): higher is costlier.
        "cpu_per_request": (
            round(fgd["server_cpu_us_per_request"] / base["server_cpu_us_per_request"], 3)
            if fgd.get("server_cpu_us_per_request") and base.get("server_cpu_us_per_request")
            else None
        ),
    }


def measure_nodejs(args: argparse.Namespace, levels: list[int], results: dict) -> None:
    """Issue 13: a no-op Node.js function against a bare node http server running the same handler."""
    if not _nodejs.available():
        results["nodejs"] = {"skipped": "no node on this machine (make installs it)"}
        return
    port = free_port()
    baseline = _nodejs.warm_baseline(port)
    daemon = None
    node: dict = {"levels": {}}
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        daemon = Daemon()
        for num in (1, 16):
            _nodejs.deploy(
                daemon, f"nodenoop{num}", strategy_config={"concurrency": max(levels), "concurrent_num": num}
            )
        for level in levels:
            entry: dict = {"baseline_node_http": wrk(f"http://127.0.0.1:{port}/", level, args.seconds)}
            for num in (1, 16):
                url = daemon.invoke_url(f"nodenoop{num}")
                # Warm up instances: their zygote starts on first use, and V8 optimises the code
                # paths over the first thousands of calls (1 s left the p99 of the first runs in seconds).
                wrk(url, level, 3, daemon.token)
                fgd = wrk(url, level, args.seconds, daemon.token)
                entry[f"concurrent_num_{num}"] = {**fgd, "vs_node_http": ratios(fgd, entry["baseline_node_http"])}
            node["levels"][str(level)] = entry
    finally:
        if daemon is not None:
            daemon.stop()
        baseline.terminate()
        baseline.wait()
    results["nodejs"] = node


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--runtimes", default="python,nodejs,custom", help="comma-separated: python, nodejs, custom (Custom and http)"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    runtimes = args.runtimes.split(",")

    baselines: dict[str, tuple[subprocess.Popen, str]] = {}
    daemon = None
    results: dict = {"benchmark": "warm_invoke", "seconds": args.seconds, "levels": {}}
    try:
        for name, script in BASELINES.items():
            port = free_port()
            process = subprocess.Popen([sys.executable, str(Path(__file__).parent / script), str(port)])
            baselines[name] = (process, f"http://127.0.0.1:{port}/")
            wait_http(baselines[name][1])
        daemon = Daemon()
        if "custom" in runtimes:
            # Issue 13: Custom (C bootstrap) and http (node server, against itself hit directly).
            results["custom_and_http"] = _custom.warm_invoke(levels, args.seconds, baselines["hypercorn"][1])
        if "python" in runtimes:
            daemon.deploy("noop1", NOOP, strategy_config={"concurrency": max(levels), "concurrent_num": 1})
            daemon.deploy("noop16", NOOP, strategy_config={"concurrency": max(levels), "concurrent_num": 16})
            for level in levels:
                entry: dict = {}
                for name, (process, url) in baselines.items():
                    entry[f"baseline_{name}"] = wrk(url, level, args.seconds, server_pid=process.pid)
                for name in ("noop1", "noop16"):
                    wrk(daemon.invoke_url(name), level, 1, daemon.token)  # warm up instances
                    fgd = wrk(daemon.invoke_url(name), level, args.seconds, daemon.token, daemon.process.pid)
                    entry[f"concurrent_num_{name[4:]}"] = {
                        **fgd,
                        **{f"vs_{base}": ratios(fgd, entry[f"baseline_{base}"]) for base in baselines},
                    }
                results["levels"][str(level)] = entry
    finally:
        if daemon is not None:
            daemon.stop()
        for process, _ in baselines.values():
            process.terminate()
            process.wait()
    if "nodejs" in runtimes:
        measure_nodejs(args, levels, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
