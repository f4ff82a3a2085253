"""Cold-start latency over HTTP, from the pre-warmed pool and with no pool, against a baseline.

Each measured invocation gets a fresh instance and goes over one kept-alive connection:
between invocations the function's config is touched (which retires its idle instance) and,
for the pool case, we wait until the pool is full again. The baseline, measured in the
same run, spawns a fresh `python3` per invocation under `unshare` (new mount,
pid, net, ipc and uts namespaces) that imports and runs the same handler.
Also reports the memory (USS) an idle specialised instance costs.

Issue 13: the same for a Node.js function (a pool of contained, started nodes), against a
fresh `node` under `unshare` loading and running the same handler (bench/_nodejs.py).
Custom (a C bootstrap) and HTTP functions (a small node server) are measured by bench/_custom.py,
against their own baselines (the bootstrap or server started fresh under `unshare`).

Issue 15: each step of specialisation is reported too (`steps`: "daemon.*" as the daemon timed
them, "instance.*" as the instance did, from /healthz's `last_cold_start` after each start).

Usage: python bench/cold_start.py [--count 100] [--runtimes python,nodejs,custom] [--in-process]
(`--count 2` proves it runs without measuring anything worth keeping.) `--in-process` measures
only the Python instance's specialisation, each step, driven over the real frames without the
daemon, whose event loop and refills make end-to-end figures noisy on a small busy host
(bench/_specialise.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

import _custom
import _nodejs
import _specialise
from _common import Daemon

NOOP = "def handler(event, context):\n    return {}\n"


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "count": len(ordered),
    }


PYTHON_RUNTIME = f"Python{sys.version_info.major}.{sys.version_info.minor}"


def pool_size(daemon: Daemon, runtime: str = PYTHON_RUNTIME) -> int:
    """The pool serving `runtime` (one pool serves several names: each lists it)."""
    with urllib.request.urlopen(f"{daemon.url}/healthz") as response:
        return json.loads(response.read())["pool"].get(runtime, 0)


def last_cold_start(daemon: Daemon) -> dict[str, dict[str, float]]:
    """Each step of the daemon's last cold start, in ms (daemon's view and the instance's)."""
    with urllib.request.urlopen(f"{daemon.url}/healthz") as response:
        return json.loads(response.read()).get("last_cold_start", {})


def step_percentiles(runs: list[dict[str, dict[str, float]]]) -> dict:
    """Per step ("daemon.cgroup_limits", "instance.load_handler", ...): its percentiles over the runs."""
    samples: dict[str, list[float]] = {}
    for run in runs:
        for side, steps in run.items():
            for name, ms in steps.items():
                samples.setdefault(f"{side}.{name}", []).append(ms)
    return {name: percentiles(values) for name, values in samples.items()}


def cold_invocations(
    daemon: Daemon, count: int, wait_for_pool: int, runtime: str = PYTHON_RUNTIME, steps: list | None = None
) -> tuple[list[float], list[float]]:
    if runtime == _nodejs.RUNTIME:
        _nodejs.deploy(daemon, "noop")
    else:
        daemon.deploy("noop", NOOP)
    wall, init = [], []
    # One unmeasured start first: it starts the runtime's zygote, and with it the pool.
    daemon.request("POST", "/functions/noop/invocations", {})
    # The timed requests go over one kept-alive connection (issue 15: a keep-alive client), so
    # a TCP handshake and the server's connection setup are not counted as the cold start's.
    client = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    headers = {"X-Auth-Token": daemon.token, "Content-Type": "application/json"}
    path = "/v2/default/fgs/functions/noop/invocations"
    try:
        for i in range(count):
            daemon.request("PUT", "/functions/noop/config", {"description": f"round {i}"})
            deadline = time.monotonic() + 10
            while wait_for_pool and pool_size(daemon, runtime) < wait_for_pool and time.monotonic() < deadline:
                time.sleep(0.005)
            started = time.perf_counter()
            client.request("POST", path, b"{}", headers)
            response = client.getresponse()
            response.read()
            wall.append((time.perf_counter() - started) * 1000)
            assert response.status == 200, response.status
            summary = json.loads(response.headers["x-cff-invoke-summary"])
            assert summary["coldStart"], summary
            init.append(summary["initDuration"])
            if steps is not None:
                # Read after the timed request: the steps of the start it caused.
                steps.append(last_cold_start(daemon))
    finally:
        client.close()
    return wall, init


def idle_instance_uss(daemon: Daemon, code_file: str = "index.py") -> dict:
    """USS of each process of one idle, specialised instance (found through its cgroup)."""
    daemon.request("PUT", "/functions/noop/config", {"description": "uss"})
    daemon.request("POST", "/functions/noop/invocations", {})
    time.sleep(0.5)
    daemon_pid = daemon.process.pid
    for procs in Path("/sys/fs/cgroup").glob(f"pids/**/fgd/{daemon_pid}-*/cgroup.procs"):
        pids = [int(p) for p in procs.read_text().split()]
        # Pooled (generic) instances are there too; only the specialised one has code mounted.
        if not any(Path(f"/proc/{p}/root/opt/function/code/{code_file}").exists() for p in pids):
            continue
        pids_uss = {p: psutil.Process(p).memory_full_info().uss for p in pids}
        return {
            "processes": len(pids),
            "uss_total_kib": sum(pids_uss.values()) // 1024,
            "uss_per_process_kib": sorted(v // 1024 for v in pids_uss.values()),
        }
    return {}


def baseline(count: int) -> list[float]:
    code = Path(tempfile.mkdtemp()) / "index.py"
    code.write_text(NOOP)
    script = (
        f"import sys, json; sys.path.insert(0, {str(code.parent)!r}); import index; "
        "print(json.dumps(index.handler({}, None)))"
    )
    argv = ["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", sys.executable, "-S", "-c", script]
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def measure(results: dict, count: int, runtime: str, code_file: str, base: list[float], base_name: str) -> None:
    """From the pool and without one, for `runtime`, against `base` (the same run's baseline)."""
    daemon = Daemon()
    try:
        steps: list = []
        wall, init = cold_invocations(daemon, count, wait_for_pool=2, runtime=runtime, steps=steps)
        results["from_pool"] = {"http": percentiles(wall), "init": percentiles(init), "steps": step_percentiles(steps)}
        results["idle_instance"] = idle_instance_uss(daemon, code_file)
    finally:
        daemon.stop()

    daemon = Daemon("[sandbox]\npool_size = 0\n")
    try:
        steps = []
        wall, init = cold_invocations(daemon, count, wait_for_pool=0, runtime=runtime, steps=steps)
        results["no_pool"] = {"http": percentiles(wall), "init": percentiles(init), "steps": step_percentiles(steps)}
    finally:
        daemon.stop()

    baseline_figures = percentiles(base)
    results[base_name] = baseline_figures
    results["ratio_p50_from_pool_vs_baseline"] = round(
        results["from_pool"]["http"]["p50_ms"] / baseline_figures["p50_ms"], 3
    )
    results["ratio_p50_no_pool_vs_baseline"] = round(
        results["no_pool"]["http"]["p50_ms"] / baseline_figures["p50_ms"], 3
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument(
        "--runtimes", default="python,nodejs,custom", help="comma-separated: python, nodejs, custom (Custom and http)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="only the Python instance's specialisation, driven without the daemon (bench/_specialise.py)",
    )
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    results: dict = {"benchmark": "cold_start", "count": args.count}
    if args.in_process:
        results["python_in_process"] = _specialise.measure(args.count, percentiles)
        print(json.dumps(results, indent=2))
        return
    if "custom" in runtimes:
        # Issue 13: Custom with a C bootstrap, http with a small node server (bench/_custom.py).
        results["custom_and_http"] = _custom.cold_start(args.count, percentiles)

    if "python" in runtimes:
        measure(
            results, args.count, PYTHON_RUNTIME, "index.py", baseline(args.count), "baseline_fresh_python_under_unshare"
        )
    if "nodejs" in runtimes:
        # Issue 13: Node.js (bench/_nodejs.py).
        if not _nodejs.available():
            results["nodejs"] = {"skipped": "no node on this machine (make installs it)"}
        else:
            node: dict = {}
            base = _nodejs.cold_baseline(args.count)
            measure(node, args.count, _nodejs.RUNTIME, "index.js", base, "baseline_fresh_node_under_unshare")
            results["nodejs"] = node
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
