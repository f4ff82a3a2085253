"""The Custom (C bootstrap) and HTTP-function (small server) cases of cold_start.py and warm_invoke.py.

Baselines, in the same run:
- cold start, Custom: the same C bootstrap started fresh under `unshare` (new mount, pid,
  ipc and uts namespaces; the host's network, to reach the bench's one-shot runtime API),
  timed from spawn to its answer of one invocation;
- cold start, http: the same server started fresh under `unshare`, timed from spawn to the
  answer of its first request (polling its port as fgd does);
- warm, http: the same server hit directly (one started on a free port on the host).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _common import Daemon, free_port, wrk

# --kill-child: the process started in the new pid namespace is its PID 1, which a SIGKILL of
# `unshare` alone would leave running (it ignores SIGTERM).
UNSHARE = ["unshare", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]

# Loops on the runtime API: GET an event, POST "{}" back. Built twice: a connection per call
# (as simple as C gets, and what shell bootstraps with curl do), and with -DKEEP_ALIVE one
# kept-alive connection for everything (what libcurl with a reused handle, Go's net/http or
# Rust's HTTP clients do).
C_BOOTSTRAP = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#ifdef KEEP_ALIVE
#define CONNECTION ""
#else
#define CONNECTION "Connection: close\r\n"
#endif

static char buf[1 << 16];
static int fd = -1;

static int open_api(void) {
    char host[64];
    strncpy(host, getenv("RUNTIME_API_ADDR"), sizeof host - 1);
    char *colon = strchr(host, ':');
    *colon = 0;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(atoi(colon + 1));
    inet_pton(AF_INET, host, &sa.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) exit(9);
    return s;
}

static char *exchange(const char *request, size_t length) {
    if (fd < 0) fd = open_api();
    if (write(fd, request, length) != (ssize_t)length) exit(7);
    size_t n = 0;
    ssize_t r;
    while ((r = read(fd, buf + n, sizeof buf - n - 1)) > 0) {
        n += r;
        buf[n] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "content-length:");
        if (end && cl && (size_t)(end + 4 - buf) + atoi(cl + 15) <= n) break;
    }
    if (r <= 0) exit(8);
    buf[n] = 0;
#ifndef KEEP_ALIVE
    close(fd);
    fd = -1;
#endif
    return buf;
}

int main(void) {
    for (;;) {
        const char *get = "GET /v1/runtime/invocation/request HTTP/1.1\r\nHost: api\r\n" CONNECTION "\r\n";
        char *id = strcasestr(exchange(get, strlen(get)), "x-cff-request-id: ") + 18;
        char rid[128];
        size_t len = strcspn(id, "\r\n");
        memcpy(rid, id, len);
        rid[len] = 0;
        char request[512];
        int n = snprintf(request, sizeof request,
            "POST /v1/runtime/invocation/response/%s HTTP/1.1\r\nHost: api\r\n" CONNECTION
            "Content-Length: 2\r\n\r\n{}", rid);
        exchange(request, n);
    }
}
"""

NODE = shutil.which("node")  # without it, the http cases are left out
# A small server: node's http module, answering {} to anything (PORT for the direct baseline).
SERVER_JS = """
require("http").createServer((req, res) => {
  req.resume();
  req.on("end", () => { res.setHeader("Content-Type", "application/json"); res.end("{}"); });
}).listen(Number(process.env.PORT || 8000), "127.0.0.1");
"""
HTTP_BOOTSTRAP = "#!/bin/sh\nexec /opt/function/runtime/nodejs20.15/rtsp/nodejs/bin/node server.js\n"


def compile_bootstrap(directory: Path, keep_alive: bool = False) -> Path:
    (directory / "main.c").write_text(C_BOOTSTRAP)
    name = "bootstrap-keepalive" if keep_alive else "bootstrap"
    flags = ["-DKEEP_ALIVE"] if keep_alive else []
    subprocess.run(["gcc", "-O2", *flags, "-o", str(directory / name), str(directory / "main.c")], check=True)
    return directory / name


def package(files: dict[str, bytes | str]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o100755 if name == "bootstrap" else 0o100644) << 16
            archive.writestr(info, content)
    return base64.b64encode(buffer.getvalue()).decode()


def deploy(daemon: Daemon, name: str, runtime: str, files: dict[str, bytes | str], **settings) -> None:
    daemon.request(
        "POST",
        "/functions",
        {
            "func_name": name,
            "runtime": runtime,
            "handler": "bootstrap",
            "code_type": "zip",
            "func_code": {"file": package(files)},
            **settings,
        },
    )


def custom_pool(daemon: Daemon) -> int:
    with urllib.request.urlopen(f"{daemon.url}/healthz") as response:
        return json.loads(response.read())["pool"].get("Custom", 0)


def cold_invocations(daemon: Daemon, name: str, count: int, wait_for_pool: int, event: dict) -> tuple[list, list]:
    wall, init = [], []
    for i in range(count):
        daemon.request("PUT", f"/functions/{name}/config", {"description": f"round {i}"})
        deadline = time.monotonic() + 10
        while wait_for_pool and custom_pool(daemon) < wait_for_pool and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.perf_counter()
        answer = daemon.request("POST", f"/functions/{name}/invocations", event)
        wall.append((time.perf_counter() - started) * 1000)
        summary = json.loads(answer["headers"]["x-cff-invoke-summary"])
        assert summary["coldStart"], summary
        init.append(summary["initDuration"])
    return wall, init


class OneShotApi(BaseHTTPRequestHandler):
    """The runtime API for the baseline: one event per GET, the POST ends the round."""

    protocol_version = "HTTP/1.1"
    answered: threading.Event

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("X-Cff-Request-Id", "baseline")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        type(self).answered.set()


def custom_baseline(bootstrap: Path, count: int) -> list[float]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OneShotApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"RUNTIME_API_ADDR": f"127.0.0.1:{server.server_address[1]}", "PATH": "/usr/bin:/bin"}
    samples = []
    try:
        for _ in range(count):
            OneShotApi.answered = threading.Event()
            started = time.perf_counter()
            process = subprocess.Popen([*UNSHARE, str(bootstrap)], env=env)
            OneShotApi.answered.wait(10)
            samples.append((time.perf_counter() - started) * 1000)
            process.kill()
            process.wait()
    finally:
        server.shutdown()
    return samples


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
    raise RuntimeError(f"nothing listens on {port}")


def http_baseline(directory: Path, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen([*UNSHARE, NODE, "server.js"], cwd=directory, env={"PORT": str(port)})
        try:
            wait_port(port)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", data=b"{}").read()
            samples.append((time.perf_counter() - started) * 1000)
        finally:
            process.kill()
            process.wait()
    return samples


def missing() -> str:
    """Why the Custom cases cannot run here ("" when they can)."""
    return "" if shutil.which("gcc") else "no gcc to build the C bootstrap"


def cold_start(count: int, percentiles) -> dict:
    """The Custom and http cold-start figures and their baselines."""
    if missing():
        return {"skipped": missing()}
    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="fgd-bench-custom-"))
    bootstrap = compile_bootstrap(work)
    (work / "server.js").write_text(SERVER_JS)
    daemon = Daemon()
    try:
        deploy(daemon, "c", "Custom", {"bootstrap": bootstrap.read_bytes()})
        daemon.request("POST", "/functions/c/invocations", {})  # the pool's zygote starts now
        wall, init = cold_invocations(daemon, "c", count, 2, {})
        results["custom_c_from_pool"] = {"http": percentiles(wall), "init": percentiles(init)}
        if NODE:
            deploy(daemon, "web", "http", {"bootstrap": HTTP_BOOTSTRAP, "server.js": SERVER_JS})
            event = {"httpMethod": "POST", "path": "/", "body": "{}"}
            wall, init = cold_invocations(daemon, "web", count, 2, event)
            results["http_node_from_pool"] = {"http": percentiles(wall), "init": percentiles(init)}
    finally:
        daemon.stop()
    base = percentiles(custom_baseline(bootstrap, count))
    results["baseline_c_bootstrap_under_unshare"] = base
    results["ratio_p50_custom_vs_baseline"] = round(results["custom_c_from_pool"]["http"]["p50_ms"] / base["p50_ms"], 3)
    if NODE:
        base = percentiles(http_baseline(work, count))
        results["baseline_node_server_under_unshare"] = base
        # What fgd adds to the server's own start (the target excludes the latter).
        results["http_init_p50_minus_server_start_ms"] = round(
            results["http_node_from_pool"]["init"]["p50_ms"] - base["p50_ms"], 3
        )
    shutil.rmtree(work, ignore_errors=True)
    return results


def warm_invoke(levels: list[int], seconds: int, baseline_url: str) -> dict:
    """Warm Custom (C bootstrap, through the invoke API) and http (node server, through a gateway
    route) figures per level; the http baseline is the same server hit directly."""
    if missing():
        return {"skipped": missing()}
    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="fgd-bench-custom-"))
    bootstrap = compile_bootstrap(work)
    (work / "server.js").write_text(SERVER_JS)
    direct = None
    daemon = Daemon()
    try:
        strategy = {"concurrency": max(levels), "concurrent_num": 1}
        deploy(daemon, "c", "Custom", {"bootstrap": bootstrap.read_bytes()}, strategy_config=strategy)
        kept = compile_bootstrap(work, keep_alive=True)
        deploy(daemon, "ckeep", "Custom", {"bootstrap": kept.read_bytes()}, strategy_config=strategy)
        if NODE:
            port = free_port()
            direct = subprocess.Popen([NODE, "server.js"], cwd=work, env={**os.environ, "PORT": str(port)})
            wait_port(port)
            deploy(
                daemon,
                "web",
                "http",
                {"bootstrap": HTTP_BOOTSTRAP, "server.js": SERVER_JS},
                strategy_config={"concurrency": max(levels), "concurrent_num": 16},
            )
            daemon.request(
                "POST", "/triggers/web", {"trigger_type_code": "APIG", "event_data": {"name": "web", "path": "/web"}}
            )
        for level in levels:
            entry: dict = {}
            base = wrk(baseline_url, level, seconds)
            wrk(daemon.invoke_url("c"), level, 1, daemon.token)
            fgd = wrk(daemon.invoke_url("c"), level, seconds, daemon.token)
            entry["custom_c"] = {
                **fgd,
                "ratio_req_per_s_vs_asgi_baseline": round(fgd["req_per_s"] / base["req_per_s"], 3),
            }
            wrk(daemon.invoke_url("ckeep"), level, 1, daemon.token)
            fgd = wrk(daemon.invoke_url("ckeep"), level, seconds, daemon.token)
            entry["custom_c_keepalive"] = {
                **fgd,
                "ratio_req_per_s_vs_asgi_baseline": round(fgd["req_per_s"] / base["req_per_s"], 3),
            }
            if NODE:
                url = f"http://127.0.0.1:{daemon.gateway_port}/web"
                same = wrk(f"http://127.0.0.1:{port}/", level, seconds)
                wrk(url, level, 1)
                fgd = wrk(url, level, seconds)
                entry["http_node_direct"] = same
                entry["http_node_through_gateway"] = {
                    **fgd,
                    "ratio_req_per_s": round(fgd["req_per_s"] / same["req_per_s"], 3),
                    "ratio_p50": round(fgd["p50_ms"] / same["p50_ms"], 3),
                }
            results[str(level)] = entry
    finally:
        daemon.stop()
        if direct is not None:
            direct.terminate()
            direct.wait()
        shutil.rmtree(work, ignore_errors=True)
    return results
