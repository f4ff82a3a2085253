"""Issue 14: network modes per function, the node's default and switch, and what the API says."""

from __future__ import annotations

import time

import httpx

from tests.conftest import Api
from tests.network.conftest import Lab, deploy_probe, run_steps

UNREACHABLE = {"error": "ENETUNREACH"}


def test_none_mode_has_loopback_only_and_reaches_nothing(node_api: Api) -> None:
    name = deploy_probe(node_api, network={"mode": "none"})
    interfaces, by_address, by_name, resolv = run_steps(
        node_api,
        name,
        {"do": "interfaces"},
        {"do": "http", "host": "198.51.100.10"},
        {"do": "resolve", "name": "web.fgd.test"},
        {"do": "file", "path": "/etc/resolv.conf"},
    )
    assert interfaces == {"names": ["lo"]}
    assert by_address == UNREACHABLE
    assert by_name == {"error": "gaierror"}
    assert resolv == {"text": ""}


def test_disable_public_network_means_none_whatever_the_mode(node_api: Api) -> None:
    name = deploy_probe(node_api, network_controller={"disable_public_network": True}, network={"mode": "outbound"})
    interfaces, fetched = run_steps(node_api, name, {"do": "interfaces"}, {"do": "http", "host": "198.51.100.10"})
    assert interfaces == {"names": ["lo"]}
    assert fetched == UNREACHABLE
    # Turned off again: the next instance has the network.
    response = node_api.http.put(
        f"/functions/{name}/config", json={"network_controller": {"disable_public_network": False}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["network"]["mode"] == "outbound"
    (fetched,) = run_steps(node_api, name, {"do": "http", "host": "198.51.100.10"})
    assert "body" in fetched


def test_new_functions_get_the_node_default_stored_and_returned(node_api: Api) -> None:
    created = node_api.deploy("def handler(event, context):\n    return 1\n")
    assert created["network"] == {"mode": "outbound", "allow": [], "bandwidth_kbps": None}
    assert created["network_controller"] is None
    name = created["func_name"]
    # An update giving only allowed destinations keeps the mode the function has.
    changed = node_api.http.put(
        f"/functions/{name}/config", json={"handler": "index.handler", "network": {"allow": [{"cidr": "192.168.77.2"}]}}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["network"] == {
        "mode": "outbound",
        "allow": [{"cidr": "192.168.77.2", "ports": [], "protocol": "tcp"}],
        "bandwidth_kbps": None,
    }


def test_bad_network_fields_are_refused_naming_them(node_api: Api) -> None:
    for network, words in [
        ({"mode": "bridge"}, "network.mode"),
        ({"allow": [{"cidr": "fe80::1/64"}]}, "IPv6"),
        ({"allow": [{"cidr": "192.168.77.2", "ports": [70000]}]}, "ports"),
        ({"allow": [{"cidr": "192.168.77.2", "protocol": "icmp"}]}, "protocol"),
        ({"allow": [{"cidr": "10.0.0.1"}] * 65}, "allow"),
        ({"bandwidth_kbps": 10}, "bandwidth_kbps"),
        ({"mode": "outbound", "extra": 1}, "extra"),
    ]:
        response = node_api.create(b"PK\x05\x06" + b"\0" * 18, network=network)
        assert response.status_code == 400, (network, response.text)
        assert words in response.text, (words, response.text)


def test_a_pooled_instance_given_to_a_none_function_loses_its_interface(node_api: Api, lab: Lab) -> None:
    # The pool's instances were made with a veth each (host ends fgdv<id> on the bridge).
    pooled = [name for name in lab.node_links() if name.startswith("fgdv")]
    assert pooled
    name = deploy_probe(node_api, network={"mode": "none"})
    (interfaces,) = run_steps(node_api, name, {"do": "interfaces"})
    assert interfaces == {"names": ["lo"]}
    # It left its interface behind in a namespace of its own; the daemon deletes the pair soon after.
    deadline = time.monotonic() + 5
    while not set(pooled) - set(lab.node_links()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(pooled) - set(lab.node_links())


def test_health_says_networking_is_available(node_api: Api) -> None:
    health = httpx.get(f"{node_api.daemon.url}/healthz").json()
    network = health["network"]
    assert network["available"] is True
    assert network["detail"] == "ok"
    assert network["default_mode"] == "outbound"
    assert network["subnet"] == "10.213.0.0/16"
    assert network["resolvers"] == ["198.51.100.53"]


def test_one_instance_cannot_hold_more_connections_than_its_conntrack_limit(node_api: Api) -> None:
    name = deploy_probe(node_api)
    (held,) = run_steps(node_api, name, {"do": "many", "host": "198.51.100.10", "port": 80, "count": 48})
    # conntrack_limit = 32 in the lab's config: the rest are refused at once.
    assert 28 <= held["connected"] <= 32
    assert held["errors"] == {"ECONNREFUSED": 48 - held["connected"]}
    # Closed, they no longer count. A connection counts until both ends have closed it and the
    # kernel's connection counter has collected it, which it does a few entries at a time.
    deadline = time.monotonic() + 5
    (again,) = run_steps(node_api, name, {"do": "http", "host": "198.51.100.10"})
    while "body" not in again and time.monotonic() < deadline:
        time.sleep(0.2)
        (again,) = run_steps(node_api, name, {"do": "http", "host": "198.51.100.10"})
    assert "body" in again
