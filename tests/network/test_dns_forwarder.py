"""Issue 14: a node whose resolver is a loopback stub (systemd-resolved's 127.0.0.53): instances
resolve through the daemon's forwarder on their gateway, which answers instances only."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Api
from tests.network.conftest import Lab, deploy_probe, lab_daemon, run_steps
from tests.network.outside import dns_answer

STUB = "127.0.0.53"
OWN_NAMES = """
    bridge = "fgdd0"
    table = "fgdd"
    veth_prefix = "fgdd"
    subnet = "10.215.0.0/16"
"""


@pytest.fixture
def stub(lab: Lab) -> Iterator[list[str]]:
    """A name server on the node's 127.0.0.53 (this thread is in the node's namespace), counting queries."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((STUB, 53))
    sock.settimeout(0.2)
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            asked.append(peer[0])
            reply = dns_answer(query)
            if reply is not None:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield asked
    stop.set()
    thread.join()
    sock.close()


def test_instances_resolve_through_the_daemons_forwarder(lab: Lab, stub: list[str], tmp_path: Path) -> None:
    daemon = lab_daemon(tmp_path, OWN_NAMES)
    # The lab's config names 198.51.100.53; this node has only its loopback stub.
    daemon.config_path.write_text(daemon.config_path.read_text().replace('"198.51.100.53"', f'"{STUB}"'))
    daemon.start()
    try:
        api = Api(daemon)
        name = deploy_probe(api)
        resolv, resolved, fetched, direct = run_steps(
            api,
            name,
            {"do": "file", "path": "/etc/resolv.conf"},
            {"do": "resolve", "name": "web.fgd.test"},
            {"do": "http", "host": "web.fgd.test"},
            # The gateway answers DNS only: its other ports stay closed to instances.
            {"do": "tcp", "host": "10.215.0.1", "port": 53},
        )
        assert resolv["text"].splitlines()[0] == "nameserver 10.215.0.1"
        assert resolved == {"address": "198.51.100.10"}
        assert fetched == {"body": "outside 192.168.77.5"}
        assert direct == {"error": "ECONNREFUSED"}
        # The stub was asked by the daemon (from loopback), never by an instance.
        assert stub and set(stub) == {"127.0.0.1"}
        asked = len(stub)
        # Anyone else asking the forwarder (here the node itself, from its LAN address) is ignored.
        query = bytes.fromhex("abcd01000001000000000000") + b"\x03web\x03fgd\x04test\x00\x00\x01\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("192.168.77.5", 0))
            sock.settimeout(1.0)
            sock.sendto(query, ("10.215.0.1", 53))
            with pytest.raises(TimeoutError):
                sock.recvfrom(512)
        assert len(stub) == asked
    finally:
        daemon.stop()
