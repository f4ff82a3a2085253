"""Issue 13: the Node.js cases of the benchmarks (cold_start.py, warm_invoke.py).

A no-op Node.js function, deployed with the installed node's own FunctionGraph name, and the
same-run baselines: for cold start, a fresh `node` under `unshare` (new mount, pid, net, ipc
and uts namespaces) that loads and runs the same handler; for warm invocations, the same
handler behind a bare node `http` server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Daemon

NOOP = "exports.handler = async (event, context) => ({});\n"
# Every Node.js name fgd takes is served by the installed node; this one is its exact major's.
RUNTIME = "Node.js20.15"


def available() -> bool:
    return shutil.which("node") is not None


def deploy(daemon: Daemon, name: str, source: str = NOOP, **settings) -> None:
    daemon.deploy(name, source, runtime=RUNTIME, file_name="index.js", **settings)


def _code_dir() -> Path:
    code = Path(tempfile.mkdtemp()) / "index.js"
    code.write_text(NOOP)
    return code.parent


def cold_baseline(count: int) -> list[float]:
    """A fresh node under unshare per invocation, loading and running the same handler (ms each)."""
    code = _code_dir()
    script = (
        f"require({json.dumps(str(code / 'index.js'))}).handler({{}}, null)"
        ".then((r) => process.stdout.write(JSON.stringify(r)))"
    )
    node = shutil.which("node") or "node"
    argv = ["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", node, "-e", script]
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


SERVER = """
const http = require('http');
const handler = require(process.argv[1]).handler;
http.createServer((request, response) => {
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', async () => {
    const text = Buffer.concat(chunks).toString();
    const result = await handler(text ? JSON.parse(text) : {}, null);
    response.setHeader('Content-Type', 'application/json');
    response.end(JSON.stringify(result));
  });
}).listen(Number(process.argv[2]), '127.0.0.1');
"""


def warm_baseline(port: int) -> subprocess.Popen:
    """The same handler behind a bare node http server on `port` (the caller stops it)."""
    node = shutil.which("node") or sys.exit("the Node.js bench needs node (make installs it)")
    return subprocess.Popen([node, "-e", SERVER, str(_code_dir() / "index.js"), str(port)])
