"""Issue 14, attacker's pass: one instance flooding the daemon's DNS forwarder (the node's resolver
is a loopback stub) with queries its upstream never answers must not leave the other functions'
instances unable to resolve names."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Api
from tests.network.conftest import Lab, deploy_probe, lab_daemon, run_steps
from tests.network.outside import dns_answer

STUB = "127.0.0.53"
OWN_NAMES = """
    bridge = "fgdf0"
    table = "fgdf"
    veth_prefix = "fgdf"
    subnet = "10.216.0.0/16"
"""

# Sends queries for names the stub never answers, as fast as it may, for `seconds`.
FLOOD = r"""
import json, os, socket, struct, time

def handler(event, context):
    gateway = open("/etc/resolv.conf").read().split()[1]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        end = time.monotonic() + event["seconds"]
        while time.monotonic() < end:
            for _ in range(100):
                name = b"".join(bytes([len(p)]) + p for p in [os.urandom(4).hex().encode(), b"slow", b"fgd", b"test"])
                query = struct.pack("!HHHHHH", sent & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\0\0\1\0\1"
                sock.sendto(query, (gateway, 53))
                sent += 1
            time.sleep(0.05)
    return json.dumps({"sent": sent})
"""


@pytest.fixture
def stub(lab: Lab) -> Iterator[None]:
    """The node's loopback stub: answers the test zone, never names under slow.fgd.test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((STUB, 53))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            if b"\x04slow" in query:
                continue
            reply = dns_answer(query)
            if reply is not None:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    sock.close()


def test_a_flooding_instance_does_not_starve_the_others_of_dns(lab: Lab, stub: None, tmp_path: Path) -> None:
    daemon = lab_daemon(tmp_path, OWN_NAMES)
    daemon.config_path.write_text(daemon.config_path.read_text().replace('"198.51.100.53"', f'"{STUB}"'))
    daemon.start()
    try:
        api = Api(daemon)
        flooder = api.deploy(FLOOD, timeout=30)["func_name"]
        victim = deploy_probe(api)
        assert run_steps(api, victim, {"do": "resolve", "name": "web.fgd.test"}) == [{"address": "198.51.100.10"}]
        flood: list = []
        thread = threading.Thread(target=lambda: flood.append(api.invoke(flooder, {"seconds": 5.0})))
        thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        resolved = run_steps(api, victim, {"do": "resolve", "name": "web.fgd.test"})
        took = time.monotonic() - started
        thread.join()
        assert flood[0].status_code == 200, flood[0].text
        assert resolved == [{"address": "198.51.100.10"}]
        assert took < 1.5  # at once, not after the resolver's retries
    finally:
        daemon.stop()
