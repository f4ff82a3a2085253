"""Issue 14, attacker's pass: an instance address given out again must not come with the
connection-tracking entries of the instance that had it before. The firewall lets through
whatever conntrack calls established; an entry left by an allowed function's instance (a
daemon restart hands the same addresses out again, from the start of the range) let another
function, with the same address and source port, reach a destination it is not allowed."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.conftest import Api
from tests.network.conftest import Lab, lab_daemon

OWN_NAMES = """
    bridge = "fgdr0"
    table = "fgdr"
    veth_prefix = "fgdr"
    subnet = "10.215.0.0/16"
"""

ECHO = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("192.168.77.2", 5997))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(100)
    sock.sendto(b"echo " + data, peer)
"""

SAME_PORT = r"""
import json, socket

def handler(event, context):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 40123))
        sock.settimeout(1.5)
        sock.connect(("192.168.77.2", 5997))
        address = sock.getsockname()[0]
        try:
            sock.send(b"hello")
            return json.dumps({"address": address, "reply": sock.recv(100).decode()})
        except OSError as exc:
            return json.dumps({"address": address, "error": type(exc).__name__})
"""


def call(api: Api, name: str) -> dict:
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    body = response.json()
    return json.loads(body) if isinstance(body, str) else body


def test_a_reused_address_does_not_inherit_the_previous_instances_connections(lab: Lab, tmp_path: Path) -> None:
    echo = subprocess.Popen(
        ["ip", "netns", "exec", lab.outside, "python3", "-c", ECHO], stdout=subprocess.PIPE, text=True
    )
    daemon = lab_daemon(tmp_path, OWN_NAMES)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        daemon.start()
        api = Api(daemon)
        allow = {"allow": [{"cidr": "192.168.77.2/32", "ports": [5997], "protocol": "udp"}]}
        # Two allowed functions take the pool's first two instances (its first two addresses).
        allowed = [api.deploy(SAME_PORT, timeout=10, network=allow)["func_name"] for _ in range(2)]
        # Functions not allowed, each on an instance of its own after the restart (the pool may
        # have handed the first two other addresses than its first two: one was seen at .2 and .4).
        others = [api.deploy(SAME_PORT, timeout=10)["func_name"] for _ in range(4)]
        first = [call(api, name) for name in allowed]
        assert [answer["reply"] for answer in first] == ["echo hello"] * 2
        assert daemon.stop(signal.SIGTERM) == 0
        daemon.start()
        api = Api(daemon)
        second = [call(api, name) for name in others]
        # Some of the same addresses (the new daemon hands them out from the start again) and the
        # same source port: the previous instances' conntrack entries would match them.
        assert {answer["address"] for answer in first} & {answer["address"] for answer in second}, (first, second)
        # Their functions may not reach the LAN host: denied at once (EHOSTUNREACH), no echo.
        assert all(answer == {"address": answer["address"], "error": "OSError"} for answer in second), second
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)
        echo.kill()
        echo.wait()
