"""Asynchronous invocation: end-to-end throughput, and draining a backlog after a restart.

Queues N events for a no-op function and measures events/s from the first
202 to the last SUCCESS. Then queues M events for a disabled function (so they
wait), kills the daemon with SIGKILL, restarts it, enables the function and
measures how long the backlog takes to drain.
The baseline, measured in the same run, is the same number of synchronous
invocations sent one after another over one keep-alive connection.

Usage: python bench/async_queue.py [--events 1000] [--backlog 10000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import Daemon

NOOP = "def handler(event, context):\n    return {}\n"


def post_many(daemon: Daemon, path: str, count: int, expect: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port)
    headers = {"X-Auth-Token": daemon.token, "Content-Type": "application/json"}
    ids = []
    for _ in range(count):
        conn.request("POST", f"/v2/default/fgs{path}", body=b"{}", headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == expect, body
        if expect == 202:
            ids.append(json.loads(body)["request_id"])
    conn.close()
    return ids


def wait_all(daemon: Daemon, name: str, count: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        waiting = daemon.request("GET", f"/functions/{name}/async-invocations?status=WAIT&limit=1")["body"]["count"]
        running = daemon.request("GET", f"/functions/{name}/async-invocations?status=RUNNING&limit=1")["body"]["count"]
        if waiting == 0 and running == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError("events did not drain in time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=10000)
    args = parser.parse_args()
    results: dict = {"benchmark": "async_queue", "events": args.events, "backlog": args.backlog}
    daemon = Daemon("[async_invoke]\nconcurrency = 8\n")
    try:
        daemon.deploy("noop", NOOP, strategy_config={"concurrency": 8, "concurrent_num": 4})
        started = time.monotonic()
        post_many(daemon, "/functions/noop/invocations", args.events, 200)
        results["baseline_sync_sequential_per_s"] = round(args.events / (time.monotonic() - started), 1)
        started = time.monotonic()
        post_many(daemon, "/functions/noop/invocations-async", args.events, 202)
        wait_all(daemon, "noop", args.events, 600)
        results["async_end_to_end_per_s"] = round(args.events / (time.monotonic() - started), 1)
        results["ratio_to_baseline"] = round(
            results["async_end_to_end_per_s"] / results["baseline_sync_sequential_per_s"], 3
        )

        # A backlog: the function disabled so nothing runs, then the daemon is killed.
        daemon.deploy("later", NOOP, strategy_config={"concurrency": 0})
        post_many(daemon, "/functions/later/invocations-async", args.backlog, 202)
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
        daemon.restart()
        daemon.request("PUT", "/functions/later/config", {"strategy_config": {"concurrency": 8, "concurrent_num": 4}})
        results["drain_after_restart_s"] = round(wait_all(daemon, "later", args.backlog, 1200), 1)
        results["drain_per_s"] = round(args.backlog / results["drain_after_restart_s"], 1)
    finally:
        daemon.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
