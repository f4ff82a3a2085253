"""Issue 14's test lab (tests/network/lab.py): the daemon under test runs inside network
namespaces the test makes; the test's main thread is in the node namespace for the module."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Api, Daemon, free_port
from tests.network.lab import NODE_ADDRESS, Lab, LabUnavailable, lab_namespaces

__all__ = ["NODE_ADDRESS", "Lab"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    try:
        with lab_namespaces() as made:
            yield made
    except LabUnavailable as exc:
        pytest.skip(str(exc))


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
        function_allow_within = [
            {{cidr = "192.168.77.0/24"}},
            {{cidr = "192.168.77.2/32", ports = [5997], protocol = "udp"}},
            {{cidr = "{NODE_ADDRESS}/32"}},
            {{cidr = "10.213.0.0/16", protocol = "udp"}},
            {{cidr = "169.254.169.254/32", ports = [80]}},
        ]
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
