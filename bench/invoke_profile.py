"""Python function calls the daemon makes per warm invocation (a count, not a timing).

Runs `fgd serve` under cProfile twice, sends a few hundred and then a few thousand warm
invocations of a no-op function over one keep-alive connection, and reports the
difference in calls per request (the daemon's fixed start-up and idle work cancels out),
with the functions that make most of them. Safe to run on a busy machine: it counts, it
does not time.

With --servers, the same count for three bare echo servers instead of the daemon: the ASGI
echo on hypercorn (bench/baseline_app.py), on fgd's own server (bench/baseline_fgd_server.py),
and a bare trio + h11 server (bench/baseline_h11.py): what the HTTP server alone costs.

Usage: python bench/invoke_profile.py [--requests 300,1500] [--source DIR] [--top 25] [--keep DIR] [--servers]
  --source: a checkout of fgd to profile instead of this one (e.g. an older commit).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

NOOP = "def handler(event, context):\n    return {}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def profile_run(source: Path, requests: int, workdir: Path) -> pstats.Stats:
    port = free_port()
    state = workdir / f"state-{requests}"
    out = workdir / f"profile-{requests}.out"
    config = workdir / "fgd.toml"
    config.write_text(f'[gateway]\nlisten = "127.0.0.1:{free_port()}"\n')
    env = {**os.environ, "PYTHONPATH": str(source)}
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "fgd", "serve"]
    argv += ["--state-dir", str(state), "--listen", f"127.0.0.1:{port}", "--config", str(config)]
    daemon = subprocess.Popen(argv, env=env, cwd=source, stderr=open(workdir / "fgd.log", "ab"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        token = (state / "admin.token").read_text().strip()
        headers = {"X-Auth-Token": token, "Content-Type": "application/json"}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("index.py", NOOP)
        create = {
            "func_name": "noop",
            "runtime": f"Python{sys.version_info.major}.{sys.version_info.minor}",
            "handler": "index.handler",
            "code_type": "zip",
            "func_code": {"file": base64.b64encode(buffer.getvalue()).decode()},
        }
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        client.request("POST", "/v2/default/fgs/functions", json.dumps(create), headers)
        assert client.getresponse().read() and True
        path = "/v2/default/fgs/functions/noop/invocations"
        for _ in range(requests + 20):  # 20 to warm the instance up
            client.request("POST", path, b"{}", headers)
            response = client.getresponse()
            response.read()
            assert response.status == 200, response.status
        client.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    return pstats.Stats(str(out))


ECHO_SERVERS = {"hypercorn": "baseline_app.py", "fgd": "baseline_fgd_server.py", "h11": "baseline_h11.py"}


def profile_server(script: str, requests: int, workdir: Path) -> pstats.Stats:
    """An echo server under cProfile, sent `requests` POSTs over one keep-alive connection."""
    port = free_port()
    out = workdir / f"profile-{script}-{requests}.out"
    here = Path(__file__).resolve().parent
    server = subprocess.Popen(
        [sys.executable, "-m", "cProfile", "-o", str(out), str(here / script), str(port)],
        env={**os.environ, "PYTHONPATH": str(here.parent)},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(requests):
            client.request("POST", "/", b"{}", {"Content-Type": "application/json"})
            response = client.getresponse()
            response.read()
            assert response.status == 200, response.status
        client.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    return pstats.Stats(str(out))


def per_request(small: pstats.Stats, large: pstats.Stats, requests: int, top: int) -> dict:
    def calls(stats: pstats.Stats) -> dict:
        return {key: value[1] for key, value in stats.stats.items()}  # type: ignore[attr-defined]

    few, many = calls(small), calls(large)
    diff = {key: (many.get(key, 0) - few.get(key, 0)) / requests for key in many}
    ranked = sorted(diff.items(), key=lambda item: -item[1])[:top]
    by_file: dict[str, float] = {}
    for key, count in diff.items():
        where = key[0] if key[0] != "~" else "builtins"
        parts = Path(where).parts
        # package/module, e.g. trio/_run.py, h11/_connection.py, fgd/web/front.py
        name = "/".join(parts[-3:] if "fgd" in parts[-3:-1] else parts[-2:])
        by_file[name] = by_file.get(name, 0) + count
    return {
        "calls_per_request": round(sum(diff.values()), 1),
        "by_module": {name: round(count, 1) for name, count in sorted(by_file.items(), key=lambda i: -i[1])[:top]},
        "top": [
            {"calls": round(count, 2), "function": f"{Path(key[0]).name}:{key[1]}:{key[2]}"} for key, count in ranked
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", default="300,1500")
    parser.add_argument("--source", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", help="keep the cProfile outputs (profile-<requests>.out) in this directory")
    parser.add_argument("--servers", action="store_true", help="profile the three bare echo servers instead")
    args = parser.parse_args()
    small, large = (int(n) for n in args.requests.split(","))
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="fgd-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.servers:
            result: dict = {
                name: per_request(
                    profile_server(script, small, workdir),
                    profile_server(script, large, workdir),
                    large - small,
                    args.top,
                )
                for name, script in ECHO_SERVERS.items()
            }
            print(json.dumps({"benchmark": "invoke_profile", "servers": result}, indent=2))
            return
        source = Path(args.source).resolve()
        result = per_request(
            profile_run(source, small, workdir), profile_run(source, large, workdir), large - small, args.top
        )
        print(json.dumps({"benchmark": "invoke_profile", "source": str(source), **result}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
