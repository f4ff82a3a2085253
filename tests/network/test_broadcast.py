"""Issue 14, attacker's pass: another instance is not reached by broadcast or multicast either
(the limited broadcast, the instance range's broadcast address, all-hosts), and the node not
through the IPv4-mapped IPv6 form of its address."""

from __future__ import annotations

import json
import threading

from tests.conftest import Api
from tests.network.conftest import NODE_ADDRESS, deploy_probe, run_steps
from tests.network.test_policy import gateway_port

SENDER = r"""
import json, socket, time

def handler(event, context):
    out = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for host in ("255.255.255.255", "10.213.255.255", "224.0.0.1"):
            try:
                for _ in range(10):
                    sock.sendto(b"hello", (host, 9998))
                    time.sleep(0.05)
                out[host] = "sent"
            except OSError as exc:
                out[host] = type(exc).__name__
    try:
        with socket.create_connection(("::ffff:" + event["node"], event["port"]), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            out["mapped"] = s.recv(100).decode(errors="replace")
    except OSError as exc:
        out["mapped"] = type(exc).__name__
    return json.dumps(out)
"""


def test_no_broadcast_or_multicast_reaches_another_instance(node_api: Api) -> None:
    target = deploy_probe(node_api)
    sender = node_api.deploy(SENDER, timeout=30)["func_name"]
    heard: list = []
    listener = threading.Thread(
        target=lambda: heard.extend(run_steps(node_api, target, {"do": "udp_listen", "port": 9998, "seconds": 3}))
    )
    listener.start()
    response = node_api.invoke(sender, {"node": NODE_ADDRESS, "port": gateway_port(node_api.daemon)})
    listener.join()
    assert response.status_code == 200, response.text
    assert heard == [{"error": "timeout"}]
    body = response.json()
    sent = json.loads(body) if isinstance(body, str) else body
    assert sent["mapped"] in ("ConnectionRefusedError", "OSError")  # never the gateway's answer
