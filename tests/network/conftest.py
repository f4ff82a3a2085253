"""Issue 14's test lab: the daemon under test runs inside network namespaces the test makes.

    outside namespace (fgdt<pid>o)               node namespace (fgdt<pid>n)
    lo: 198.51.100.10 (HTTP), 198.51.100.53 (DNS),  eth0 192.168.77.5/24, default via .1
        169.254.169.254 (fake metadata)             fgd serve (its bridge, tables, instances)
    up0: 192.168.77.1/24 (the node's router),
         192.168.77.2/24 (a fake LAN host)  <== veth ==>

No packet leaves this machine: the node namespace's only uplink is the veth into the
outside namespace, which has no uplink at all. The test process's main thread enters
the node namespace for the module (sockets it opens and processes it starts are there:
the daemon, its API clients); both namespaces are deleted at the end, also on failure,
and ones left by a test process that is gone are deleted first.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import Api, Daemon, free_port

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
PREFIX = "fgdt"
NODE_ADDRESS = "192.168.77.5"
OUTSIDE = Path(__file__).with_name("outside.py")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def remove_stale_labs() -> None:
    """Namespaces of test processes that are gone (a killed run)."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        name = entry.name
        owner = name[len(PREFIX) : -1]
        if name.startswith(PREFIX) and owner.isdigit() and not psutil.pid_exists(int(owner)):
            ip("netns", "del", name, check=False)


@dataclass
class Lab:
    node: str
    outside: str

    def node_links(self) -> list[str]:
        return [link["ifname"] for link in json.loads(ip("-n", self.node, "-j", "link", "show"))]

    def node_tables(self) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.node, "nft", "list", "tables"], capture_output=True, text=True
        )
        return done.stdout

    def outside_run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.outside, *argv], capture_output=True, text=True, timeout=20)


@contextlib.contextmanager
def lab_namespaces() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (network namespaces)")
    remove_stale_labs()
    lab = Lab(f"{PREFIX}{os.getpid()}n", f"{PREFIX}{os.getpid()}o")
    server = None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    entered = False
    try:
        ip("netns", "add", lab.outside)
        ip("netns", "add", lab.node)
        o, n = ("-n", lab.outside), ("-n", lab.node)
        # Made inside the outside namespace, its peer directly in the node's: never on this machine's own.
        ip(*o, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", lab.node)
        for address in ("198.51.100.10/32", "198.51.100.53/32", "169.254.169.254/32"):
            ip(*o, "addr", "add", address, "dev", "lo")
        ip(*o, "addr", "add", "192.168.77.1/24", "dev", "up0")
        ip(*o, "addr", "add", "192.168.77.2/24", "dev", "up0")
        ip(*o, "link", "set", "lo", "up")
        ip(*o, "link", "set", "up0", "up")
        ip(*n, "addr", "add", f"{NODE_ADDRESS}/24", "dev", "eth0")
        ip(*n, "link", "set", "lo", "up")
        ip(*n, "link", "set", "eth0", "up")
        ip(*n, "route", "add", "default", "via", "192.168.77.1")
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.outside, sys.executable, str(OUTSIDE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        fd = os.open(NETNS_DIR / lab.node, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
            entered = True
        finally:
            os.close(fd)
        yield lab
    finally:
        if entered:
            setns(own)
        os.close(own)
        if server is not None:
            server.kill()
            server.wait()
        for name in (lab.node, lab.outside):
            ip("netns", "del", name, check=False)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_namespaces() as made:
        yield made


def lab_config(network: str = "") -> str:
    """The lab daemon's config; `network` adds lines to its [network] section."""
    return textwrap.dedent(
        f"""
        [instances]
        idle_keepalive = 60.0

        [gateway]
        listen = "0.0.0.0:{free_port()}"

        [network]
        resolvers = ["198.51.100.53"]
        conntrack_limit = 32
        allow = [{{cidr = "192.168.77.2/32", ports = [1884]}}]
        """
    ) + textwrap.dedent(network)


def lab_daemon(tmp: Path, network: str = "") -> Daemon:
    """A daemon for the lab (not started); its gateway listens on every address of the node."""
    return Daemon(tmp / "state", lab_config(network), env={"FGD_NETWORK_OFF": ""})


@pytest.fixture(scope="module")
def node(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = lab_daemon(tmp_path_factory.mktemp("netnode"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def node_api(node: Daemon) -> Api:
    return Api(node)


# The function every test deploys: runs the steps of its event and says what each did.
PROBE = r"""
import errno, json, os, socket, subprocess, time

def _err(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    return errno.errorcode.get(exc.errno, type(exc).__name__) if getattr(exc, "errno", None) else type(exc).__name__

def http(host, port=80, path="/hello", timeout=3):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return {"body": data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")}
    except OSError as exc:
        return {"error": _err(exc)}

def tcp(host, port, timeout=3):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            return {"body": s.recv(200).decode(errors="replace")}
    except OSError as exc:
        return {"error": _err(exc)}

def step(s):
    do = s["do"]
    if do == "http":
        return http(s["host"], s.get("port", 80), s.get("path", "/hello"))
    if do == "tcp":
        return tcp(s["host"], s["port"])
    if do == "resolve":
        try:
            return {"address": socket.gethostbyname(s["name"])}
        except OSError as exc:
            return {"error": type(exc).__name__}
    if do == "interfaces":
        return {"names": [name for _, name in socket.if_nameindex()]}
    if do == "file":
        try:
            return {"text": open(s["path"]).read()}
        except OSError as exc:
            return {"error": _err(exc)}
    if do == "socket":
        try:
            socket.socket(s["family"], s["type"], s.get("proto", 0)).close()
            return {"ok": True}
        except OSError as exc:
            return {"error": _err(exc)}
    if do == "listen":
        try:
            with socket.socket() as sock:
                sock.bind(("0.0.0.0", 0))
                sock.listen()
            return {"ok": True}
        except OSError as exc:
            return {"error": _err(exc)}
    if do == "run":
        done = subprocess.run(s["argv"], capture_output=True, text=True)
        return {"code": done.returncode, "out": done.stdout, "err": done.stderr}
    if do == "address":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(("198.51.100.10", 9))
                return {"address": sock.getsockname()[0]}
            except OSError as exc:
                return {"error": _err(exc)}
    if do == "udp_listen":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("0.0.0.0", s["port"]))
            sock.settimeout(s["seconds"])
            try:
                data, peer = sock.recvfrom(100)
                return {"got": data.decode(), "from": peer[0]}
            except OSError as exc:
                return {"error": _err(exc)}
    if do == "udp_send":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                for _ in range(s.get("times", 5)):
                    sock.sendto(b"hello", (s["host"], s["port"]))
                    time.sleep(0.1)
                return {"ok": True}
            except OSError as exc:
                return {"error": _err(exc)}
    if do == "many":
        held, errors = [], {}
        for _ in range(s["count"]):
            try:
                held.append(socket.create_connection((s["host"], s["port"]), timeout=2))
            except OSError as exc:
                errors[_err(exc)] = errors.get(_err(exc), 0) + 1
        for sock in held:
            sock.close()
        return {"connected": len(held), "errors": errors}
    if do == "download":
        started = time.monotonic()
        total = 0
        with socket.create_connection((s["host"], 80), timeout=10) as sock:
            sock.sendall(f"GET /bytes?n={s['size']} HTTP/1.0\r\n\r\n".encode())
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
        return {"bytes": total, "seconds": time.monotonic() - started}
    return {"error": "unknown step"}

def handler(event, context):
    return json.dumps([step(s) for s in event.get("steps", [])])
"""


def deploy_probe(api: Api, **settings) -> str:
    settings.setdefault("timeout", 30)
    return api.deploy(PROBE, **settings)["func_name"]


def run_steps(api: Api, name: str, *steps: dict) -> list[dict]:
    response = api.invoke(name, {"steps": list(steps)})
    assert response.status_code == 200, response.text
    return json.loads(response.json() if isinstance(response.json(), str) else response.text)
