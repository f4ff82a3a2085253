"""Issue 14, attacker's pass: an instance sending with a source address not its own.

An unprivileged process may bind a socket to an address its host does not have
(IP_FREEBIND needs no capability). Were its datagrams sent, they could carry another
instance's address (whose function the operator allowed somewhere: the per-function allow
list is keyed on the source address), or one outside the instance range (not masqueraded:
a forged packet out of the node). The kernel refuses to route them (only IP_TRANSPARENT,
which needs CAP_NET_ADMIN, lifts that); raw sockets are refused by seccomp and the missing
CAP_NET_RAW (test_policy). This keeps both facts checked from the attacker's side.
"""

from __future__ import annotations

import json
import subprocess
import time

from tests.conftest import Api
from tests.network.conftest import Lab, deploy_probe, run_steps

SPOOFER = r"""
import json, socket, time

IP_FREEBIND = 15

def handler(event, context):
    sent = []
    for source, (host, port) in event["from_to"]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                sock.bind((source, 0))
                for _ in range(10):
                    sock.sendto(b"forged", (host, port))
                    time.sleep(0.05)
                sent.append("sent")
            except OSError as exc:
                sent.append(f"{type(exc).__name__} {exc}")
    return json.dumps(sent)
"""

LISTEN = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.settimeout(float(sys.argv[3]))
print("ready", flush=True)
heard = []
try:
    while True:
        data, peer = sock.recvfrom(100)
        heard.append(peer[0])
except OSError:
    pass
print(" ".join(sorted(set(heard))), flush=True)
"""


def listen_outside(lab: Lab, address: str, port: int, seconds: float) -> subprocess.Popen:
    listener = subprocess.Popen(
        ["ip", "netns", "exec", lab.outside, "python3", "-c", LISTEN, address, str(port), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    return listener


def heard_from(listener: subprocess.Popen) -> list[str]:
    out, _ = listener.communicate(timeout=20)
    return out.split()


def test_forged_source_addresses_never_leave_the_instance_port(node_api: Api, lab: Lab) -> None:
    # A function the operator allowed to send to a LAN host's UDP port, and its instance's address.
    allowed = deploy_probe(
        node_api, network={"allow": [{"cidr": "192.168.77.2/32", "ports": [5997], "protocol": "udp"}]}
    )
    ((address),) = run_steps(node_api, allowed, {"do": "address"})
    victim = address["address"]
    attacker = node_api.deploy(SPOOFER, timeout=30)["func_name"]
    lan = listen_outside(lab, "192.168.77.2", 5997, 2.0)
    public = listen_outside(lab, "198.51.100.10", 5998, 2.0)
    response = node_api.invoke(
        attacker,
        {"from_to": [[victim, ["192.168.77.2", 5997]], ["198.51.100.77", ["198.51.100.10", 5998]]]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    sent = json.loads(body) if isinstance(body, str) else body
    # The bind is allowed, the sending is not ...
    assert sent == ["OSError [Errno 101] Network is unreachable"] * 2
    # ... and nothing with a forged source reaches the allowed function's destination or the outside.
    assert heard_from(lan) == []
    assert heard_from(public) == []
    # The allowed function itself still reaches its destination (masqueraded to the node's address).
    lan = listen_outside(lab, "192.168.77.2", 5997, 1.5)
    time.sleep(0.1)
    assert run_steps(node_api, allowed, {"do": "udp_send", "host": "192.168.77.2", "port": 5997, "times": 3}) == [
        {"ok": True}
    ]
    assert heard_from(lan) == ["192.168.77.5"]
