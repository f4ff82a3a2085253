"""Soak: a real daemon under a mixed, hostile load for a long time, watched for leaks.

Runs `fgd serve` for --minutes (default 30) while a few client threads send
synchronous and asynchronous invocations, gateway calls and code updates, to
well-behaved functions and to ones that crash, time out, run out of memory,
flood their output or write garbage to their protocol socket; a timer fires
every few seconds. Every --sample seconds it records the daemon's RSS, open
descriptors and threads, the instance cgroups and processes under the daemon,
the size of fgd.db, and the 5xx answers so far. At the end the load stops,
instances are left to be reaped, and an idle sample is compared with the idle
sample taken before the load.

It prints JSON and exits non-zero on a leak: RSS growth over 5% from the end
of warm-up (the first third) to the end, or over 2% within the last third;
descriptors, cgroups or processes not back to their idle baseline; or any 5xx
answer. Traffic goes to 127.0.0.1 only.

Usage: python bench/soak.py [--minutes 30] [--sample 60] [--clients 4]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import random
import sys
import threading
import time
import zipfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _common import Daemon

RUNTIME = f"Python{sys.version_info.major}.{sys.version_info.minor}"

FUNCTIONS = {
    "ok": ("def handler(event, context):\n    return {'ok': event.get('n')}\n", {}),
    "crash": ("import os\ndef handler(event, context):\n    os._exit(3)\n", {}),
    "raises": ("def handler(event, context):\n    raise ValueError('no')\n", {}),
    "slow": ("import time\ndef handler(event, context):\n    time.sleep(5)\n", {"timeout": 1}),
    "hog": ("def handler(event, context):\n    return len(bytearray(400 * 2**20))\n", {"memory_size": 128}),
    "chatty": (
        "import os, sys\n"
        "def handler(event, context):\n"
        "    for n in range(200):\n"
        "        print('line', n, 'x' * 200)\n"
        "    os.write(1, b'y' * (4 << 20))\n"  # 4 MiB without a newline
        "    os.write(2, bytes(range(256)) * 64 + b'\\n')\n"
        "    return 'said a lot'\n",
        {},
    ),
    "garbage": (
        "import os, socket, stat, struct\n"
        "def handler(event, context):\n"
        "    for fd in range(3, 1024):\n"
        "        try:\n"
        "            if stat.S_ISSOCK(os.fstat(fd).st_mode):\n"
        "                socket.socket(fileno=os.dup(fd)).sendall(struct.pack('>I', 1 << 30) + b'junk')\n"
        "                break\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 'unreachable'\n",
        {},
    ),
    "gw": (
        "def handler(event, context):\n"
        "    return {'statusCode': 200, 'headers': {'Content-Type': 'text/plain'}, 'body': 'gw', "
        "'isBase64Encoded': False}\n",
        {},
    ),
    "ticker": ("def handler(event, context):\n    return event.get('trigger_type')\n", {}),
}
SYNC_WEIGHTS = {"ok": 40, "crash": 3, "raises": 5, "slow": 2, "hog": 2, "chatty": 4, "garbage": 2}


def zipped(source: str) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", source)
    return base64.b64encode(buffer.getvalue()).decode()


class Load:
    """Client threads with keep-alive connections; counts answers by status."""

    def __init__(self, daemon: Daemon, gateway_port: int, clients: int, seed: int) -> None:
        self.daemon = daemon
        self.gateway_port = gateway_port
        self.clients = clients
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.status: dict[str, int] = {}
        self.server_errors: list[str] = []
        self.transport_errors = 0
        self.transport_seen: list[str] = []

    def count(self, what: str, status: int, body: bytes) -> None:
        with self.lock:
            key = f"{what}:{status}"
            self.status[key] = self.status.get(key, 0) + 1
            if status >= 500 and len(self.server_errors) < 20:
                self.server_errors.append(f"{what} {status} {body[:200]!r}")

    def run_client(self, number: int) -> None:
        rng = random.Random(number)
        api = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=60)
        gateway = http.client.HTTPConnection("127.0.0.1", self.gateway_port, timeout=60)
        headers = {"X-Auth-Token": self.daemon.token, "Content-Type": "application/json"}
        names, weights = zip(*SYNC_WEIGHTS.items(), strict=True)
        while not self.stop.is_set():
            roll = rng.random()
            what = "connect"
            try:
                if roll < 0.70:
                    name = rng.choices(names, weights)[0]
                    what, conn, method, path, body = name, api, "POST", f"/functions/{name}/invocations", b"{}"
                elif roll < 0.85:
                    what, conn, method, path, body = "async", api, "POST", "/functions/ok/invocations-async", b"{}"
                elif roll < 0.97:
                    what, conn, method, path, body = "gateway", gateway, "GET", "/soak", None
                else:
                    source = FUNCTIONS["ok"][0] + f"# revision {rng.random()}\n"
                    payload = {"code_type": "zip", "func_code": {"file": zipped(source)}}
                    what, conn, method, path, body = "update", api, "PUT", "/functions/ok/code", json.dumps(payload)
                prefix = "" if conn is gateway else "/v2/default/fgs"
                conn.request(method, prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                self.count(what, response.status, response.read())
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.transport_errors += 1
                    if len(self.transport_seen) < 10:
                        self.transport_seen.append(f"{what}: {type(exc).__name__}: {exc}")
                api.close()
                gateway.close()
            # About 20-40 requests per second per client: steady pressure, not a throughput test.
            time.sleep(rng.uniform(0.01, 0.04))
        api.close()
        gateway.close()


def cgroups_of(pid: int) -> int:
    return sum(1 for d in Path("/sys/fs/cgroup").glob("**/fgd*") for _ in d.glob(f"{pid}-*"))


def sample(daemon: Daemon, load: Load | None, started: float) -> dict:
    process = psutil.Process(daemon.process.pid)
    db = daemon.dir / "state" / "fgd.db"
    db_bytes = sum(p.stat().st_size for p in (db, db.with_name("fgd.db-wal")) if p.exists())
    return {
        "minute": round((time.monotonic() - started) / 60, 2),
        "rss_mb": round(process.memory_info().rss / 2**20, 1),
        "fds": process.num_fds(),
        "threads": process.num_threads(),
        "cgroups": cgroups_of(process.pid),
        "processes": len(process.children(recursive=True)),
        "db_mb": round(db_bytes / 2**20, 1),
        "server_errors": sum(v for k, v in load.status.items() if int(k.rsplit(":", 1)[1]) >= 500) if load else 0,
    }


def fd_kinds(pid: int) -> dict[str, int]:
    """The daemon's open descriptors by kind (socket, pipe, anon_inode:..., or the file's path)."""
    kinds: dict[str, int] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        kind = target.split(":[")[0] if ":[" in target else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def wait_idle(daemon: Daemon, baseline: dict, within: float) -> dict:
    """Sample until processes, cgroups and fds are back to the baseline, or `within` runs out."""
    deadline = time.monotonic() + within
    while True:
        now = sample(daemon, None, time.monotonic())
        back = all(now[k] <= baseline[k] for k in ("processes", "cgroups", "fds"))
        if back or time.monotonic() > deadline:
            return now
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--sample", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    daemon = Daemon(
        "[instances]\nidle_keepalive = 5.0\n[scheduler]\nmax_wait = 2.0\n[logs]\nmax_lines_per_invocation = 2000\n"
    )
    gateway_port = daemon.gateway_port
    result: dict = {"benchmark": "soak", "minutes": args.minutes, "clients": args.clients}
    try:
        for name, (source, settings) in FUNCTIONS.items():
            daemon.deploy(name, source, **settings)
        daemon.request(
            "POST",
            "/triggers/gw",
            {
                "trigger_type_code": "APIG",
                "trigger_status": "ACTIVE",
                "event_data": {"name": "soak", "path": "/soak", "req_method": "ANY", "auth": "NONE"},
            },
        )
        timer = daemon.request(
            "POST",
            "/triggers/ticker",
            {
                "trigger_type_code": "TIMER",
                "trigger_status": "ACTIVE",
                "event_data": {"name": "tick", "schedule_type": "Cron", "schedule": "*/5 * * * * ?"},
            },
        )
        time.sleep(3)
        idle_before = sample(daemon, None, time.monotonic())
        fds_before = fd_kinds(daemon.process.pid)
        time.sleep(1)  # (the timer's instance comes and goes on its own; it is stopped before the idle check)
        load = Load(daemon, gateway_port, args.clients, args.seed)
        threads = [threading.Thread(target=load.run_client, args=(n,), daemon=True) for n in range(args.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples = []
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(args.sample, max(0.0, end - time.monotonic())))
            samples.append(sample(daemon, load, started))
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
        load.stop.set()
        for thread in threads:
            thread.join(90)
        daemon.request("DELETE", f"/triggers/ticker/TIMER/{timer['body']['trigger_id']}")
        idle_after = wait_idle(daemon, idle_before, within=60)
        # Warm-up is the first third: the allocator's arenas and SQLite's page cache (which grows
        # with fgd.db up to its cache size) settle in steps over the first minutes. A leak keeps
        # growing, so the last third must also be flat.
        warm = samples[min(len(samples) - 1, len(samples) // 3)]
        rss_growth = (samples[-1]["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]
        late = samples[min(len(samples) - 1, 2 * len(samples) // 3)]
        late_growth = (samples[-1]["rss_mb"] - late["rss_mb"]) / late["rss_mb"]
        leaks = []
        if rss_growth > 0.05:
            leaks.append(f"RSS grew {rss_growth:.1%} after warm-up ({warm['rss_mb']} -> {samples[-1]['rss_mb']} MB)")
        if late_growth > 0.02:
            leaks.append(
                f"RSS still grew {late_growth:.1%} in the last third ({late['rss_mb']} -> {samples[-1]['rss_mb']} MB)"
            )
        for key in ("fds", "cgroups", "processes"):
            if idle_after[key] > idle_before[key]:
                leaks.append(f"{key}: {idle_before[key]} idle before, {idle_after[key]} idle after")
        fds_after = fd_kinds(daemon.process.pid)
        result["fds_changed"] = {
            k: [fds_before.get(k, 0), fds_after.get(k, 0)]
            for k in sorted(set(fds_before) | set(fds_after))
            if fds_before.get(k, 0) != fds_after.get(k, 0)
        }
        server_errors = sum(v for k, v in load.status.items() if int(k.rsplit(":", 1)[1]) >= 500)
        if server_errors:
            leaks.append(f"{server_errors} answers were 5xx: {load.server_errors[:5]}")
        alive = daemon.process.poll() is None
        if not alive:
            leaks.append("the daemon exited")
        result.update(
            requests=sum(load.status.values()),
            by_status=dict(sorted(load.status.items())),
            transport_errors=load.transport_errors,
            transport_errors_seen=load.transport_seen,
            rss_growth_after_warmup=round(rss_growth, 4),
            rss_growth_last_third=round(late_growth, 4),
            idle_before=idle_before,
            idle_after=idle_after,
            samples=samples,
            leaks=leaks,
            ok=not leaks,
        )
    finally:
        daemon.stop()
    print(json.dumps(result, indent=2))
    sys.exit(0 if result.get("ok") else 1)


if __name__ == "__main__":
    main()
