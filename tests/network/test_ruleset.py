"""Issue 14: the daemon's firewall tables as data (no kernel): what each chain says."""

from __future__ import annotations

import json

from fgd.config import NetworkConfig
from fgd.netpolicy import Destination
from fgd.network import Network, destination_elements


def ruleset(**options) -> list[dict]:
    network = Network(NetworkConfig(**options), available=True, detail="")
    network.resolvers = ["198.51.100.53", "127.0.0.53"]
    return network.ruleset()


def sets(commands: list[dict]) -> dict[str, dict]:
    return {c["add"]["set"]["name"]: c["add"]["set"] for c in commands if "set" in c.get("add", {})}


def test_denied_ranges_cover_link_local_private_shared_multicast_and_broadcast() -> None:
    denied = sets(ruleset())["denied"]["elem"]
    prefixes = {(e["prefix"]["addr"], e["prefix"]["len"]) for e in denied}
    for network in [
        ("169.254.0.0", 16),
        ("10.0.0.0", 8),
        ("172.16.0.0", 12),
        ("192.168.0.0", 16),
        ("100.64.0.0", 10),
        ("127.0.0.0", 8),
        ("224.0.0.0", 3),  # multicast, reserved and 255.255.255.255
    ]:
        assert network in prefixes


def test_an_instance_range_outside_the_denied_ranges_is_denied_too() -> None:
    # A documentation range is "private" to the config check but in none of the denied ranges:
    # other instances must stay unreachable all the same.
    denied = sets(ruleset(subnet="192.0.2.0/24"))["denied"]["elem"]
    assert {"prefix": {"addr": "192.0.2.0", "len": 24}} in denied


def test_loopback_resolvers_are_not_allowed_destinations() -> None:
    resolvers = sets(ruleset())["resolvers"]
    assert resolvers["elem"] == ["198.51.100.53"]


def test_allowed_destinations_become_set_elements_per_port_or_every_port() -> None:
    assert destination_elements(Destination("192.168.77.2", [1883, 8883])) == [
        {"concat": ["192.168.77.2", "tcp", 1883]},
        {"concat": ["192.168.77.2", "tcp", 8883]},
    ]
    assert destination_elements(Destination("192.168.77.0/24", protocol="udp"), "10.213.0.9") == [
        {"concat": ["10.213.0.9", {"prefix": {"addr": "192.168.77.0", "len": 24}}, "udp", {"range": [1, 65535]}]}
    ]


def test_ipv6_is_dropped_both_ways_and_instances_never_bridge_to_each_other() -> None:
    commands = ruleset()
    text = json.dumps(commands)
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    for chain in ("egress", "to_node"):
        first = next(r for r in rules if r["chain"] == chain)
        assert first["expr"][0]["match"]["right"] == "ipv6"
        assert first["expr"][1] == {"drop": None}
    bridge = next(r for r in rules if r["family"] == "bridge")
    assert bridge["expr"][-1] == {"drop": None}
    assert '"fgdv*"' in text
    # New connections into instances are dropped; only answers pass.
    into = [
        r for r in rules if r["chain"] == "forward" and r["expr"][0]["match"]["left"] == {"meta": {"key": "oifname"}}
    ]
    assert into[-1]["expr"][-1] == {"drop": None}


def test_destination_refuses_ipv6_and_garbage() -> None:
    import msgspec
    import pytest

    for bad in ("fe80::1", "::/0", "not-an-address", "300.1.1.1"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"cidr": bad}, Destination)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"cidr": "1.2.3.4", "ports": [0]}, Destination)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"cidr": "1.2.3.4", "ports": [65536]}, Destination)


def test_effective_mode_disable_public_network_wins() -> None:
    from fgd.netpolicy import FunctionNetwork, effective_mode

    assert effective_mode(None, False) == "outbound"  # stored before networking: FunctionGraph's default
    assert effective_mode(FunctionNetwork(mode="none"), False) == "none"
    assert effective_mode(FunctionNetwork(mode="outbound"), True) == "none"
    assert effective_mode(FunctionNetwork(mode="outbound"), False) == "outbound"


def test_unavailable_networking_gives_every_function_loopback_only() -> None:
    from fgd.model import FunctionSettings
    from fgd.netpolicy import FunctionNetwork

    network = Network(NetworkConfig(), available=False, detail="not root")
    settings = FunctionSettings(handler="index.handler", network=FunctionNetwork(mode="outbound"))
    assert network.mode_of(settings) == "none"
    assert Network(NetworkConfig(), available=True, detail="ok").mode_of(settings) == "outbound"


def test_addresses_are_handed_out_round_robin_and_run_out_with_a_message() -> None:
    import pytest

    from fgd.network import NetworkError

    network = Network(NetworkConfig(subnet="10.9.0.0/24"), available=True, detail="")
    assert network.gateway == "10.9.0.1"
    taken = [network._take_address() for _ in range(253)]
    assert taken[:3] == ["10.9.0.2", "10.9.0.3", "10.9.0.4"] and taken[-1] == "10.9.0.254"
    with pytest.raises(NetworkError, match="all 253 addresses"):
        network._take_address()
    network._give_back("10.9.0.3")
    network._give_back("10.9.0.7")
    # The one freed first comes back first, each only once.
    assert [network._take_address(), network._take_address()] == ["10.9.0.3", "10.9.0.7"]


def test_resolv_conf_names_the_forwarder_for_a_loopback_stub() -> None:
    network = Network(NetworkConfig(), available=True, detail="")
    network.resolvers = ["127.0.0.53"]
    assert network.resolv_conf().splitlines()[0] == "nameserver 10.213.0.1"
    network.resolvers = ["192.168.1.1", "9.9.9.9"]
    assert network.resolv_conf().splitlines()[:2] == ["nameserver 192.168.1.1", "nameserver 9.9.9.9"]


def test_attach_refuses_the_daemons_own_namespace() -> None:
    """A pid that is not an instance's (here our own) is never given an instance's interface."""
    import os

    import pytest

    from fgd.network import NetworkError

    network = Network(NetworkConfig(), available=True, detail="")
    network._ipr = object()  # never reached: the check comes first
    with pytest.raises(NetworkError, match="no network namespace of its own"):
        network.attach("abc", os.getpid())
    assert network._taken == set()


def test_a_node_that_did_not_forward_forwards_only_for_instances() -> None:
    network = Network(NetworkConfig(), available=True, detail="")
    network._forwarding_was = "0"
    rules = [c["add"]["rule"] for c in network.ruleset() if "rule" in c.get("add", {})]
    neither = [
        r["expr"]
        for r in rules
        if r["chain"] == "forward" and [m.get("match", {}).get("op") for m in r["expr"][:2]] == ["!=", "!="]
    ]
    assert neither == [
        [
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "fgd0"}},
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "fgd0"}},
            {"drop": None},
        ]
    ]
    # A node that forwarded already (a router, docker) keeps forwarding as it did.
    network._forwarding_was = "1"
    rules = [c["add"]["rule"] for c in network.ruleset() if "rule" in c.get("add", {})]
    assert not [
        r
        for r in rules
        if r["chain"] == "forward"
        and r["expr"][-1] == {"drop": None}
        and len(r["expr"]) == 3
        and r["expr"][0]["match"]["op"] == "!="
    ]


def test_a_large_instance_range_costs_nothing_up_front() -> None:
    import time

    started = time.perf_counter()
    network = Network(NetworkConfig(subnet="10.0.0.0/8"), available=True, detail="")
    assert network._take_address() == "10.0.0.2"
    assert time.perf_counter() - started < 0.05
