"""Issue 14: what a function's own allow list may name ([network] function_allow_within)."""

from __future__ import annotations

from fgd.netpolicy import Destination, ungranted, within

GRANTS = [
    Destination("192.168.10.0/24", [1883, 8883]),
    Destination("10.1.2.3/32", [], "udp"),
]


def test_inside_a_grant_range_protocol_and_ports() -> None:
    assert within(Destination("192.168.10.5", [1883]), GRANTS)
    assert within(Destination("192.168.10.0/25", [1883, 8883]), GRANTS)
    assert within(Destination("10.1.2.3", [53, 5353], "udp"), GRANTS)
    assert within(Destination("10.1.2.3", [], "udp"), GRANTS)  # every port: the grant has none


def test_outside_is_refused_whatever_overlaps() -> None:
    refused = [
        Destination("192.168.10.5", []),  # every port, the grant has two
        Destination("192.168.10.5", [1883, 22]),
        Destination("192.168.10.5", [1883], "udp"),
        Destination("192.168.0.0/16", [1883]),  # wider than the grant
        Destination("0.0.0.0/0", [1883]),
        Destination("10.1.2.3", [53], "tcp"),
    ]
    assert ungranted(refused, GRANTS) == refused
    assert ungranted([Destination("192.168.10.5", [1883])], []) == [Destination("192.168.10.5", [1883])]


def test_overlapping_node_wide_destinations_are_a_config_error() -> None:
    import msgspec
    import pytest

    from fgd.config import NetworkConfig

    with pytest.raises(msgspec.ValidationError, match="overlap"):
        msgspec.convert(
            {"allow": [{"cidr": "192.168.10.0/24"}, {"cidr": "192.168.10.5", "ports": [1883]}]}, NetworkConfig
        )
    ok = {
        "allow": [
            {"cidr": "192.168.10.5", "ports": [1883]},
            {"cidr": "192.168.10.5", "ports": [1883], "protocol": "udp"},
        ]
    }
    assert len(msgspec.convert(ok, NetworkConfig).allow) == 2
