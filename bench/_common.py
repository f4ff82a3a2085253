"""Helpers shared by the benchmarks: a daemon, a port, wrk with JSON output."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Auth-Token"] = os.getenv("FGD_TOKEN") or ""
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "errors": %d, "non_2xx": %d, "p50_ms": %.4f, "p90_ms": %.4f, "p99_ms": %.4f}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (not its children), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, seconds: float, token: str = "", server_pid: int | None = None) -> dict:
    """wrk's figures; with `server_pid`, also the CPU that process spent per request
    (`server_cpu_us_per_request`): a figure a busy, shared machine disturbs far less than req/s."""
    if not shutil.which("wrk"):
        sys.exit("bench needs wrk: apt-get install wrk (make bench installs it)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    try:
        result = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            env={**os.environ, "FGD_TOKEN": token},
            check=True,
        )
    finally:
        os.unlink(script.name)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["req_per_s"] = round(figures["requests"] / figures["seconds"], 1)
    if server_pid and figures["requests"]:
        spent = cpu_seconds(server_pid) - cpu_before
        figures["server_cpu_us_per_request"] = round(spent / figures["requests"] * 1e6, 1)
    return figures


class Daemon:
    def __init__(self, config: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fgd-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_port = free_port()
        (self.dir / "fgd.toml").write_text(config + f'\n[gateway]\nlisten = "127.0.0.1:{self.gateway_port}"\n')
        self.restart()

    def restart(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fgd",
                "serve",
                "--state-dir",
                str(self.dir / "state"),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--config",
                str(self.dir / "fgd.toml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "fgd.log", "ab"),  # noqa: SIM115
            # Issue 14: benchmarks run on the machine's own network: no instance networking there
            # (bench/network.py runs its daemon inside network namespaces of its own).
            env={**os.environ, "FGD_NETWORK_OFF": os.environ.get("FGD_NETWORK_OFF", "1")},
        )
        wait_http(f"{self.url}/healthz")
        self.token = (self.dir / "state" / "admin.token").read_text().strip()

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.url}/v2/default/fgs{path}",
            data=data,
            method=method,
            headers={"X-Auth-Token": self.token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req) as response:
            raw = response.read()
            headers = {k.lower(): v for k, v in response.headers.items()}
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")  # a function's plain string result
            return {"headers": headers, "body": body}

    def deploy(self, name: str, source: str, *, runtime: str = "", file_name: str = "index.py", **settings) -> None:
        """A function whose code is `source` in `file_name` (default: Python, this interpreter's version)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(file_name, source)
        self.request(
            "POST",
            "/functions",
            {
                "func_name": name,
                "runtime": runtime or f"Python{sys.version_info.major}.{sys.version_info.minor}",
                "handler": "index.handler",
                "code_type": "zip",
                "func_code": {"file": base64.b64encode(buffer.getvalue()).decode()},
                **settings,
            },
        )

    def invoke_url(self, name: str) -> str:
        return f"{self.url}/v2/default/fgs/functions/{name}/invocations"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)
