"""Issue 14: what networking costs. Runs entirely inside the network lab of tests/network/lab.py
(two namespaces of its own; nothing leaves the machine).

- cold start from the pool, a function in mode `outbound` against one in mode `none`
  (target: outbound no more than +1 ms at p50);
- throughput of a function downloading --size-mb from the outside's test server, against
  curl in the outside namespace downloading the same (target: >= 0.8x).

Usage (as root): python bench/network.py [--count 30] [--size-mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))

from _common import Daemon  # noqa: E402

from tests.network.lab import lab_namespaces  # noqa: E402

NOOP = "def handler(event, context):\n    return {}\n"
DOWNLOAD = """
import socket, time

def handler(event, context):
    started = time.monotonic()
    total = 0
    with socket.create_connection(("198.51.100.10", 80), timeout=30) as sock:
        sock.sendall(f"GET /bytes?n={event['size']} HTTP/1.0\\r\\n\\r\\n".encode())
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    return {"bytes": total, "seconds": time.monotonic() - started}
"""
CONFIG = """
[network]
resolvers = ["198.51.100.53"]
"""


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "count": len(ordered),
    }


def pool_size(daemon: Daemon) -> int:
    with urllib.request.urlopen(f"{daemon.url}/healthz") as response:
        return sum(json.loads(response.read())["pool"].values())


def cold_starts(daemon: Daemon, count: int) -> dict:
    """Alternating rounds, so both modes see the same machine load."""
    daemon.deploy("outbound", NOOP, network={"mode": "outbound"})
    daemon.deploy("none", NOOP, network={"mode": "none"})
    samples: dict[str, dict[str, list[float]]] = {m: {"wall": [], "init": []} for m in ("outbound", "none")}
    for i in range(count):
        for mode in ("outbound", "none"):
            daemon.request("PUT", f"/functions/{mode}/config", {"description": f"round {i}"})
            deadline = time.monotonic() + 10
            while pool_size(daemon) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            started = time.perf_counter()
            answer = daemon.request("POST", f"/functions/{mode}/invocations", {})
            samples[mode]["wall"].append((time.perf_counter() - started) * 1000)
            summary = json.loads(answer["headers"]["x-cff-invoke-summary"])
            assert summary["coldStart"], summary
            samples[mode]["init"].append(summary["initDuration"])
    result = {mode: {kind: percentiles(v) for kind, v in s.items()} for mode, s in samples.items()}
    result["p50_init_outbound_minus_none_ms"] = round(
        result["outbound"]["init"]["p50_ms"] - result["none"]["init"]["p50_ms"], 3
    )
    return result


def throughput(daemon: Daemon, outside: str, size: int) -> dict:
    # 2048 MB: FunctionGraph's CPU share for it (1800 millicores) lets the download use a core.
    daemon.deploy("download", DOWNLOAD, network={"mode": "outbound"}, timeout=120, memory_size=2048)
    inside = daemon.request("POST", "/functions/download/invocations", {"size": size})["body"]
    url = f"http://198.51.100.10/bytes?n={size}"
    curl = subprocess.run(
        ["ip", "netns", "exec", outside, "curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    curl_bytes, curl_seconds = curl.stdout.split()
    function_rate = inside["bytes"] / inside["seconds"] / 1e6
    curl_rate = int(curl_bytes) / float(curl_seconds) / 1e6
    return {
        "bytes": size,
        "function_MB_per_s": round(function_rate, 1),
        "curl_outside_MB_per_s": round(curl_rate, 1),
        "ratio_function_vs_curl": round(function_rate / curl_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    # The daemon here runs inside the lab's node namespace: its networking is on.
    os.environ["FGD_NETWORK_OFF"] = ""
    results: dict = {"benchmark": "network", "count": args.count}
    with lab_namespaces() as lab:
        daemon = Daemon(CONFIG)
        try:
            results["cold_start_from_pool"] = cold_starts(daemon, args.count)
            results["download"] = throughput(daemon, lab.outside, args.size_mb * 1_000_000)
        finally:
            daemon.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
