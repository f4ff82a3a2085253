"""Issue 14: the egress policy, from the attacker's side. Denied destinations fail at once (a TCP
connection is reset: ECONNREFUSED; anything else gets EHOSTUNREACH), and each becomes reachable
once the operator allows exactly it."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import Api, Daemon
from tests.network.conftest import NODE_ADDRESS, Lab, deploy_probe, run_steps

DENIED = {"error": "ECONNREFUSED"}


def gateway_port(daemon: Daemon) -> int:
    text = daemon.config_path.read_text() if daemon.config_path else ""
    line = next(line for line in text.splitlines() if line.startswith('listen = "0.0.0.0:'))
    return int(line.rsplit(":", 1)[1].rstrip('"'))


def test_the_node_itself_is_unreachable_on_every_address(node_api: Api, lab: Lab) -> None:
    port = gateway_port(node_api.daemon)
    # The gateway listens on every address of the node: the outside reaches it...
    reached = lab.outside_run(
        "python3", "-c", f"import socket; socket.create_connection(('{NODE_ADDRESS}', {port}), 3)"
    )
    assert reached.returncode == 0, reached.stderr
    name = deploy_probe(node_api)
    results = run_steps(
        node_api,
        name,
        {"do": "tcp", "host": NODE_ADDRESS, "port": port},
        {"do": "tcp", "host": "10.213.0.1", "port": port},
        {"do": "tcp", "host": "10.213.0.1", "port": node_api.daemon.port},
        {"do": "tcp", "host": NODE_ADDRESS, "port": 22},
        {"do": "tcp", "host": "10.213.0.1", "port": 53},
    )
    # ... an instance does not, on the uplink's address or the bridge's, whatever the port.
    assert results == [DENIED] * 5


def test_the_node_is_reachable_on_exactly_the_allowed_address_and_port(node_api: Api) -> None:
    port = gateway_port(node_api.daemon)
    allow = [{"cidr": f"{NODE_ADDRESS}/32", "ports": [port]}]
    name = deploy_probe(node_api, network={"allow": allow})
    allowed, other_port, other_address = run_steps(
        node_api,
        name,
        {"do": "http", "host": NODE_ADDRESS, "port": port, "path": "/nothing"},
        {"do": "tcp", "host": NODE_ADDRESS, "port": node_api.daemon.port},
        {"do": "tcp", "host": "10.213.0.1", "port": port},
    )
    assert "error" not in allowed and allowed["body"]  # the gateway's own answer (a 404 page)
    assert other_port == DENIED
    assert other_address == DENIED


def test_metadata_service_is_unreachable_unless_allowed(node_api: Api) -> None:
    denied = deploy_probe(node_api)
    assert run_steps(node_api, denied, {"do": "http", "host": "169.254.169.254"}) == [DENIED]
    allowed = deploy_probe(node_api, network={"allow": [{"cidr": "169.254.169.254", "ports": [80]}]})
    assert run_steps(node_api, allowed, {"do": "http", "host": "169.254.169.254"}) == [
        {"body": f"metadata-secret {NODE_ADDRESS}"}
    ]


def test_lan_host_is_unreachable_unless_allowed_per_function_or_node_wide(node_api: Api) -> None:
    plain = deploy_probe(node_api)
    broker, web, node_wide = run_steps(
        node_api,
        plain,
        {"do": "tcp", "host": "192.168.77.2", "port": 1883},
        {"do": "http", "host": "192.168.77.2"},
        # The node's config allows 192.168.77.2:1884 for every function.
        {"do": "tcp", "host": "192.168.77.2", "port": 1884},
    )
    assert broker == DENIED
    assert web == DENIED
    assert node_wide == {"body": f"broker:1884 {NODE_ADDRESS}\n"}
    allowed = deploy_probe(node_api, network={"allow": [{"cidr": "192.168.77.2/32", "ports": [1883]}]})
    broker, web, by_name = run_steps(
        node_api,
        allowed,
        {"do": "tcp", "host": "192.168.77.2", "port": 1883},
        {"do": "http", "host": "192.168.77.2"},
        {"do": "tcp", "host": "lan.fgd.test", "port": 1883},
    )
    assert broker == {"body": f"broker:1883 {NODE_ADDRESS}\n"}
    assert web == DENIED  # the same host, another port: not allowed
    assert by_name == broker
    # UDP to the allowed TCP port is not allowed either (the protocol is part of the rule).
    (udp,) = run_steps(node_api, allowed, {"do": "udp_send", "host": "192.168.77.2", "port": 1883, "times": 2})
    assert udp in ({"ok": True}, DENIED)


def _listen_for_datagram(api: Api, name: str, port: int, into: list) -> None:
    into.extend(run_steps(api, name, {"do": "udp_listen", "port": port, "seconds": 4}))


@pytest.mark.slow
def test_another_instance_is_unreachable_unless_allowed(node_api: Api) -> None:
    target = deploy_probe(node_api)
    ((address),) = run_steps(node_api, target, {"do": "address"})
    target_ip = address["address"]
    sender = deploy_probe(node_api)
    heard: list = []
    listener = threading.Thread(target=_listen_for_datagram, args=(node_api, target, 9999, heard))
    listener.start()
    results = run_steps(
        node_api,
        sender,
        {"do": "udp_send", "host": target_ip, "port": 9999, "times": 20},
        {"do": "tcp", "host": target_ip, "port": 9999},
    )
    listener.join()
    assert heard == [{"error": "timeout"}]
    assert results[1] == DENIED
    allowed = deploy_probe(node_api, network={"allow": [{"cidr": target_ip, "ports": [9999], "protocol": "udp"}]})
    heard = []
    listener = threading.Thread(target=_listen_for_datagram, args=(node_api, target, 9999, heard))
    listener.start()
    sent = run_steps(node_api, allowed, {"do": "udp_send", "host": target_ip, "port": 9999, "times": 20})
    listener.join()
    assert sent == [{"ok": True}]
    assert heard and heard[0].get("got") == "hello"
    # Seen from its own address: instance to instance is routed by the node, not masqueraded.
    assert heard[0]["from"].startswith("10.213.")


def test_private_and_shared_ranges_are_denied(node_api: Api) -> None:
    name = deploy_probe(node_api)
    results = run_steps(
        node_api,
        name,
        {"do": "tcp", "host": "10.1.2.3", "port": 80},
        {"do": "tcp", "host": "172.16.0.1", "port": 80},
        {"do": "tcp", "host": "100.64.0.1", "port": 80},
        {"do": "tcp", "host": "198.18.0.1", "port": 80},
    )
    assert results == [DENIED] * 4


def test_raw_and_packet_sockets_are_refused(node_api: Api) -> None:
    name = deploy_probe(node_api)
    raw, packet, icmp = run_steps(
        node_api,
        name,
        {"do": "socket", "family": 2, "type": 3, "proto": 1},  # AF_INET, SOCK_RAW, ICMP
        {"do": "socket", "family": 17, "type": 3, "proto": 768},  # AF_PACKET, all protocols
        {"do": "socket", "family": 2, "type": 2, "proto": 1},  # ping socket
    )
    assert raw == {"error": "EPERM"}
    assert packet == {"error": "EPERM"}
    assert "error" in icmp  # ping sockets need a group range the function's uid is not in


def test_a_function_cannot_change_its_address_routes_or_interface(node_api: Api) -> None:
    name = deploy_probe(node_api)
    before, add, route, down, after, outside = run_steps(
        node_api,
        name,
        {"do": "address"},
        {"do": "run", "argv": ["ip", "addr", "add", "10.213.0.1/32", "dev", "eth0"]},
        {"do": "run", "argv": ["ip", "route", "replace", "default", "via", "10.213.0.2"]},
        {"do": "run", "argv": ["ip", "link", "set", "eth0", "down"]},
        {"do": "address"},
        {"do": "http", "host": "198.51.100.10"},
    )
    for attempt in (add, route, down):
        assert attempt["code"] != 0
        assert "Operation not permitted" in attempt["err"]
    assert after == before
    assert outside == {"body": f"outside {NODE_ADDRESS}"}
