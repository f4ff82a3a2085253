"""Issue 14: what a function's instances may reach. Pure data and rules, no kernel here.

A function runs in one of two network modes:

- `none`: loopback only (a pooled instance handed to such a function loses its
  interface before the function's code runs);
- `outbound`: a veth into the daemon's bridge, NAT out of the node, and the egress
  policy of fgd.network: never the node itself, link-local addresses (cloud
  metadata), private and shared ranges (the LAN), other instances, multicast or
  broadcast, unless the operator allows a destination (`Destination`), node-wide in
  `[network] allow` or per function in its `network.allow`.

FunctionGraph's `network_controller.disable_public_network: true` always means `none`.
fgd's own field `network {mode, allow}` says the rest; a create that leaves `mode` out
gets the node's `[network] default_mode` (so changing it affects only new functions).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Mode = Literal["none", "outbound"]
NONE = "none"
OUTBOUND = "outbound"
Port = Annotated[int, Meta(ge=1, le=65535)]
# Per function: enough for a few brokers and databases, and a bound on the firewall set.
MAX_FUNCTION_DESTINATIONS = 64
# Denied to instances unless allowed (IPv4; instances have no IPv6 at all): this network,
# private ranges, shared address space (carrier-grade NAT), loopback, link-local (cloud
# metadata at 169.254.169.254), benchmarking and reserved ranges, multicast and broadcast.
DENIED_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
)


class Destination(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A destination the operator allows: an IPv4 address or CIDR, a protocol, ports (none: all)."""

    cidr: Annotated[str, Meta(max_length=64)]
    ports: Annotated[list[Port], Meta(max_length=64)] = []
    protocol: Literal["tcp", "udp"] = "tcp"

    def __post_init__(self) -> None:
        try:
            network = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:
            raise ValueError(f"{self.cidr!r} is not an IPv4 address or CIDR") from None
        if network.version != 4:
            raise ValueError(f"{self.cidr!r}: instances have no IPv6, only IPv4 destinations can be allowed")
        if len(set(self.ports)) != len(self.ports):
            raise ValueError(f"{self.cidr!r}: a port is listed twice")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr, strict=False)


class FunctionNetwork(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """fgd's per-function network field (FunctionGraph has only disable_public_network)."""

    # None in a request: the node's default. Stored resolved.
    mode: Mode | None = None
    allow: Annotated[list[Destination], Meta(max_length=MAX_FUNCTION_DESTINATIONS)] = []
    # Each instance's traffic, each way, in kilobits per second (packets past it are dropped,
    # which TCP takes as congestion); None: no limit.
    bandwidth_kbps: Annotated[int, Meta(ge=64, le=100_000_000)] | None = None

    def __post_init__(self) -> None:
        # The firewall's interval sets cannot hold two entries that overlap: refused here, not
        # when every instance fails to start.
        for i, one in enumerate(self.allow):
            for other in self.allow[:i]:
                if overlap(one, other):
                    raise ValueError(
                        f"allow: {one.cidr} and {other.cidr} ({one.protocol}) overlap; merge them into one entry"
                    )


def overlap(one: Destination, other: Destination) -> bool:
    """Whether two destinations share an address, protocol and port (no ports: every port)."""
    if one.protocol != other.protocol or not one.network.overlaps(other.network):
        return False
    return not one.ports or not other.ports or bool(set(one.ports) & set(other.ports))


def within(asked: Destination, grants: list[Destination]) -> bool:
    """Whether a function's destination lies inside one the operator grants: its range, its
    protocol, and its ports (a grant without ports grants every port; asking for none asks for all)."""
    for grant in grants:
        if asked.protocol != grant.protocol or not asked.network.subnet_of(grant.network):
            continue
        if not grant.ports or (asked.ports and set(asked.ports) <= set(grant.ports)):
            return True
    return False


def ungranted(allow: list[Destination], grants: list[Destination]) -> list[Destination]:
    """The destinations of a function's allow list that no grant covers."""
    return [d for d in allow if not within(d, grants)]


def effective_mode(network: FunctionNetwork | None, disable_public_network: bool) -> Mode:
    """What the function asked for: disable_public_network wins, then its mode (stored resolved)."""
    if disable_public_network:
        return NONE
    if network is None or network.mode is None:
        # Stored before issue 14 (or by a test helper): as FunctionGraph, public network on.
        return OUTBOUND
    return network.mode
