"""Issue 14: the instances' network, the daemon's side (the rules are in fgd.netpolicy).

Kernel networking only, no helper process per instance:

- a bridge owned by the daemon (`[network] bridge`, the first address of `subnet`);
- a veth pair per pooled instance, made when the pool member is made (off the request
  path): the host end on the bridge, the other end created directly in the instance's
  network namespace as `eth0` with its address, a default route via the bridge and IPv6
  disabled; a `none` function's instance removes it itself before its code runs
  (sandbox.network);
- the daemon's nftables tables (inet and bridge families, named `[network] table`),
  loaded atomically through libnftables' JSON interface (fgd.nft): masquerade out of the
  node, the egress policy, the per-instance connection-tracking limit, and no traffic
  from one instance's port of the bridge to another's.

Links, addresses and routes go through pyroute2. Everything is removed at shutdown, and at
start when a daemon that is gone (SIGKILL, crash) left it behind. Everything here blocks:
the daemon calls it from worker threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil

from fgd.config import NetworkConfig
from fgd.netpolicy import DENIED_V4, NONE, OUTBOUND, Destination, FunctionNetwork, Mode, effective_mode, within
from sandbox.policy import EnterPolicy

log = logging.getLogger("fgd.network")

# Set in a test run's environment (tests/conftest.py): a daemon started by a test outside the
# network namespaces the network tests make never touches the machine's own network.
ENV_OFF = "FGD_NETWORK_OFF"
CLONE_NEWNET = 0x40000000
INSTANCE_IFNAME = "eth0"
STATS_INTERVAL = 1.0
# What an instance is told when it reaches something the policy denies, at once rather than a
# timeout: a TCP reset (ECONNREFUSED), else ICMP administratively prohibited (EHOSTUNREACH). The
# kernel rate-limits ICMP errors per peer, not resets: a function that keeps trying still gets a
# fast answer on TCP.
DENY = {"jump": {"target": "deny"}}


class NetworkError(Exception):
    """Setting up the node's or an instance's network failed; the message says what."""


class Lease(msgspec.Struct):
    """One instance's interface: its host-side veth and its address."""

    instance_id: str
    ifname: str
    address: str
    # The function it was given (for the traffic counters), and its own allowed destinations.
    function: tuple[str, str, str] | None = None
    elements: list[dict] = []
    # Those naming a single address: the only ones that may reach the node itself.
    node_elements: list[dict] = []
    # Whether it has bandwidth limit objects (bw_<instance>_out, _in).
    limited: bool = False
    # Last counters read: rx/tx bytes and packets of the host end (rx = sent by the instance).
    stats: tuple[int, int, int, int] = (0, 0, 0, 0)


def node_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    """The IPv4 name servers of the node's resolv.conf, in order."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    found.append(str(ipaddress.IPv4Address(words[1])))
    return found


def availability(config: NetworkConfig, *, root: bool, namespaces: bool) -> tuple[bool, str]:
    """Whether `outbound` can work here, and why not (before anything is created)."""
    if os.environ.get(ENV_OFF):
        return False, f"switched off by the environment ({ENV_OFF} is set)"
    if not config.allow_outbound:
        return False, "outbound is forbidden by [network] allow_outbound = false; every function has loopback only"
    if not root:
        return False, "not root: cannot make interfaces or firewall rules"
    if not namespaces:
        return False, "instances have no network namespace of their own (namespaces are off)"
    try:
        import pyroute2  # noqa: F401
    except ImportError as exc:
        return False, f"pyroute2 is not installed ({exc}); reinstall fgd"
    from fgd.nft import NftUnavailable, load_library

    try:
        load_library()
    except NftUnavailable as exc:
        return False, str(exc)
    if not Path("/proc/sys/net/ipv4/ip_forward").exists():
        return False, "this kernel has no IPv4 forwarding"
    return True, "ok"


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """Run the block with this thread (only this one) in the network namespace `fd`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            try:
                _setns(own)
            except OSError:
                # A worker thread left in an instance's namespace would do the daemon's work there.
                log.critical("cannot return a worker thread to the daemon's network namespace; exiting")
                os._exit(70)
    finally:
        os.close(own)


def _match(left: object, right: object, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _field(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _limit_by(field: str, limits: str) -> dict:
    return {"limit": {"map": {"key": _field("ip", field), "data": limits}}}


ESTABLISHED = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
ACCEPT = {"accept": None}
DESTINATION = {"concat": [_field("ip", "daddr"), _meta("l4proto"), _field("th", "dport")]}
SOURCE_DESTINATION = {"concat": [_field("ip", "saddr"), _field("ip", "daddr"), _meta("l4proto"), _field("th", "dport")]}


def _prefix(network: ipaddress.IPv4Network) -> object:
    if network.prefixlen == 32:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def destination_elements(destination: Destination, source: str | None = None) -> list[dict]:
    """Set elements for one allowed destination (with the instance's address first, if given)."""
    ports: list[object] = list(destination.ports) or [{"range": [1, 65535]}]
    head = [source] if source is not None else []
    return [{"concat": [*head, _prefix(destination.network), destination.protocol, port]} for port in ports]


class Network:
    """The daemon's bridge, firewall tables and instance interfaces."""

    def __init__(self, config: NetworkConfig, *, available: bool, detail: str) -> None:
        self.config = config
        self.available = available
        self.detail = detail
        self.subnet = ipaddress.IPv4Network(config.subnet)
        # The first address is the bridge's; instances get the rest but the broadcast address
        # (computed, not listed: a /8 has 16 million).
        self.gateway = str(self.subnet.network_address + 1)
        self.prefixlen = self.subnet.prefixlen
        self._first = int(self.subnet.network_address) + 2
        self._count = self.subnet.num_addresses - 3
        self._next = 0
        self._taken: set[str] = set()
        self.leases: dict[str, Lease] = {}
        # Traffic of instances gone, per function: rx bytes, rx packets, tx bytes, tx packets.
        self.totals: dict[tuple[str, str, str], list[int]] = {}
        self.resolvers: list[str] = []
        self._lock = threading.Lock()
        self._ipr = None
        self._nft = None
        self._bridge_index = 0
        self._forwarding_was = ""
        # Whether the names are this daemon's to remove (no other live daemon's).
        self._owned = False

    # Mode of a function ----------------------------------------------------------

    def mode_of(self, settings) -> Mode:
        """What a function's instances get here: its own mode, unless the node cannot give it."""
        controller = settings.network_controller
        mode = effective_mode(settings.network, bool(controller and controller.disable_public_network))
        return mode if self.available else NONE

    # Node setup and teardown --------------------------------------------------------

    def start(self) -> None:
        """Remove what a previous daemon left, then make the bridge and load the tables.

        On failure networking is unavailable (every function gets loopback only) and
        `detail` says why; nothing half-made is left.
        """
        if not self.available:
            return
        from pyroute2 import IPRoute

        from fgd.nft import Nft

        try:
            self._ipr = IPRoute()
            self._nft = Nft()
            self._check_owner()
            self._owned = True
            self._forwarding_was = self._node_forwarding()
            removed = self.remove_stale()
            if removed:
                log.info("removed network objects left by a previous run: %s", ", ".join(removed))
            forgotten = self.forget_connections(self.subnet)
            if forgotten:
                log.info("forgot %d tracked connections of a previous run's instances", forgotten)
            self._check_subnet()
            self._make_bridge()
            self.resolvers = self.config.resolvers or node_resolvers()
            self._nft.run(self.ruleset())
            self._enable_forwarding()
        except Exception as exc:  # noqa: BLE001 - any failure leaves the node without outbound, said why
            self.available = False
            self.detail = f"cannot set up instance networking: {exc}"
            log.error("%s; functions get loopback only", self.detail)
            if self._owned:
                with contextlib.suppress(Exception):
                    self.remove_stale()
            self._close_handles()
            return
        log.info(
            "instance network: bridge %s %s/%d, resolvers %s, masquerade out of %s",
            self.config.bridge,
            self.gateway,
            self.prefixlen,
            ", ".join(self.resolvers) or "none",
            self.config_uplink(),
        )

    def config_uplink(self) -> str:
        return f"every interface but {self.config.bridge}"

    def stop(self) -> None:
        """At exit: the tables, the bridge and every instance interface go."""
        if self._ipr is None or not self._owned:
            return
        with contextlib.suppress(Exception):
            self.remove_stale()
        if self._forwarding_was == "0" and not self._other_daemons():
            with contextlib.suppress(OSError):
                Path("/proc/sys/net/ipv4/ip_forward").write_text("0")
        self.leases.clear()
        self._close_handles()

    def _other_daemons(self) -> bool:
        """Whether another fgd's tables (other names, this namespace) still need forwarding."""
        from fgd.nft import NftError

        assert self._nft is not None
        try:
            tables = [o["table"]["name"] for o in self._nft.run([{"list": {"tables": None}}]) if "table" in o]
        except NftError:
            return False
        for name in tables:
            with contextlib.suppress(NftError):
                self._nft.run([{"list": {"set": {"family": "inet", "table": name, "name": "owner"}}}])
                return True
        return False

    def _close_handles(self) -> None:
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None
        if self._nft is not None:
            self._nft.close()
            self._nft = None

    def remove_stale(self) -> list[str]:
        """Delete this daemon's tables, bridge and host-side veths, wherever they came from."""
        from fgd.nft import NftError

        assert self._ipr is not None and self._nft is not None
        removed = []
        for family in ("inet", "bridge"):
            try:
                self._nft.run([{"delete": {"table": {"family": family, "name": self.config.table}}}])
                removed.append(f"{family} table {self.config.table}")
            except NftError:
                pass  # not there
        with self._lock:
            for link in self._ipr.get_links():
                name = link.get_attr("IFLA_IFNAME") or ""
                if name == self.config.bridge or name.startswith(self.config.veth_prefix):
                    with contextlib.suppress(Exception):
                        self._ipr.link("del", index=link["index"])
                        removed.append(name)
        return removed

    def forget_connections(self, network: ipaddress.IPv4Network) -> int:
        """Delete the connection-tracking entries of instances in `network` (an address, or the
        whole range at start). The firewall lets through what conntrack calls established: an
        address given out again must not come with its previous instance's connections, which
        an instance of another function, sending from the same port, would otherwise use past
        the policy. How many were deleted."""
        from pyroute2 import Conntrack

        deleted = 0
        with Conntrack() as conntrack:
            # The kernel dumps the whole table (pyroute2 filters here): done off the request path.
            for entry in list(conntrack.dump_entries()):
                source = entry.tuple_orig.saddr
                if entry.tuple_orig.family != 2 or source is None:
                    continue
                if ipaddress.IPv4Address(source) in network:
                    with contextlib.suppress(Exception):  # gone meanwhile
                        conntrack.delete(entry)
                        deleted += 1
        return deleted

    def _check_owner(self) -> None:
        """Another live daemon's tables and bridge (the same names, in this network namespace) are
        left alone: networking is unavailable here until the names differ."""
        from fgd.nft import NftError

        assert self._nft is not None
        try:
            answer = self._nft.run([{"list": {"set": {"family": "inet", "table": self.config.table, "name": "owner"}}}])
        except NftError:
            return  # no table, or one without an owner: stale either way
        owners = [e for obj in answer if "set" in obj for e in obj["set"].get("elem", []) if isinstance(e, int)]
        for pid in owners:
            if pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                if any("fgd" in part for part in psutil.Process(pid).cmdline()):
                    raise NetworkError(
                        f"the fgd daemon with pid {pid} owns the table {self.config.table} and bridge "
                        f"{self.config.bridge}; give this daemon other [network] names (table, bridge, "
                        "veth_prefix, subnet)"
                    )

    def _check_subnet(self) -> None:
        """The instance range must not be one the node already uses (its LAN, a VPN)."""
        assert self._ipr is not None
        for message in self._ipr.get_addr(family=2):
            address = ipaddress.IPv4Interface(f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}")
            if address.network.overlaps(self.subnet) and not address.ip.is_loopback:
                raise NetworkError(
                    f"[network] subnet {self.subnet} overlaps the node's address {address}; choose another range"
                )

    def _make_bridge(self) -> None:
        assert self._ipr is not None
        ipr = self._ipr
        # A MAC of its own: a bridge without one takes the lowest of its ports', which changes as
        # instances come and go, and every instance's cached gateway address would go stale.
        mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
        ipr.link("add", ifname=self.config.bridge, kind="bridge", address=mac)
        self._bridge_index = ipr.link_lookup(ifname=self.config.bridge)[0]
        # No IPv6 on the bridge: instances have none, and the node must not answer them on it.
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{self.config.bridge}/disable_ipv6").write_text("1")
        # Instance to instance goes through the node (and the policy): no redirect tells them otherwise.
        Path(f"/proc/sys/net/ipv4/conf/{self.config.bridge}/send_redirects").write_text("0")
        ipr.addr("add", index=self._bridge_index, address=self.gateway, prefixlen=self.prefixlen)
        ipr.link("set", index=self._bridge_index, state="up")

    def _node_forwarding(self) -> str:
        """Whether the node forwarded IPv4 before any fgd: as a daemon killed with SIGKILL left it
        noted in its tables (it had turned forwarding on), else as it is now."""
        from fgd.nft import NftError

        assert self._nft is not None
        with contextlib.suppress(NftError):
            listed = self._nft.run(
                [{"list": {"set": {"family": "inet", "table": self.config.table, "name": "node_forwarding"}}}]
            )
            noted = [e for obj in listed if "set" in obj for e in obj["set"].get("elem", []) if isinstance(e, int)]
            if noted:
                return str(noted[0])
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()

    def _enable_forwarding(self) -> None:
        if self._forwarding_was != "1":
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
            log.info(
                "enabled IPv4 forwarding (net.ipv4.ip_forward) for instance traffic only: the node "
                "still forwards nothing else"
            )

    def ruleset(self) -> list[dict]:
        """The daemon's tables as one atomic batch."""
        table, bridge, config = self.config.table, self.config.bridge, self.config
        inet = {"family": "inet", "table": table}

        def chain(name: str, **hook: object) -> dict:
            return {"add": {"chain": {**inet, "name": name, **hook}}}

        def rule(chain_name: str, *expr: dict) -> dict:
            return {"add": {"rule": {**inet, "chain": chain_name, "expr": list(expr)}}}

        def named_set(name: str, kind: object, flags: list[str], elements: list) -> dict:
            body: dict = {**inet, "name": name, "type": kind}
            if flags:
                body["flags"] = flags
            if elements:
                body["elem"] = elements
            return {"add": {"set": body}}

        node_allow = [e for d in config.allow for e in destination_elements(d)]
        # The node itself is reached only through an entry naming one address (its own): a range
        # that happens to contain it (the LAN, 0.0.0.0/0) opens the range, not the node's sshd,
        # gateway and admin API.
        node_self = [e for d in config.allow if d.network.prefixlen == 32 for e in destination_elements(d)]
        denied = [_prefix(ipaddress.IPv4Network(n)) for n in DENIED_V4]
        if not any(self.subnet.subnet_of(ipaddress.IPv4Network(n)) for n in DENIED_V4):
            denied.append(_prefix(self.subnet))
        from_bridge = _match(_meta("iifname"), bridge)
        to_bridge = _match(_meta("oifname"), bridge)
        count_limit = {
            "set": {
                "op": "add",
                "elem": _field("ip", "saddr"),
                "set": "@ctlimit",
                "stmt": [{"ct count": {"val": config.conntrack_limit, "inv": True}}],
            }
        }
        dns = [(proto, _match(_field(proto, "dport"), 53)) for proto in ("udp", "tcp")]
        commands: list[dict] = [
            {"add": {"table": {"family": "inet", "name": table}}},
            named_set("node_allow", ["ipv4_addr", "inet_proto", "inet_service"], ["interval"], node_allow),
            named_set("fn_allow", ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"], ["interval"], []),
            named_set("node_allow_self", ["ipv4_addr", "inet_proto", "inet_service"], ["interval"], node_self),
            named_set("fn_allow_self", ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"], ["interval"], []),
            named_set("resolvers", "ipv4_addr", [], [r for r in self.resolvers if not _loopback(r)]),
            named_set("denied", "ipv4_addr", ["interval"], denied),
            # The daemon that owns the tables (a second daemon on the node leaves them alone).
            named_set("owner", "mark", [], [os.getpid()]),
            # Whether the node forwarded before fgd turned forwarding on (restored at exit).
            named_set("node_forwarding", "mark", [], [1 if self._forwarding_was == "1" else 0]),
            {"add": {"set": {**inet, "name": "ctlimit", "type": "ipv4_addr", "size": 65535}}},
            *[
                {"add": {"map": {**inet, "name": f"bandwidth_{d}", "type": "ipv4_addr", "map": "limit"}}}
                for d in ("out", "in")
            ],
            chain("forward", type="filter", hook="forward", prio=0, policy="accept"),
            chain("egress"),
            chain("input", type="filter", hook="input", prio=0, policy="accept"),
            chain("to_node"),
            chain("deny"),
            chain("postrouting", type="nat", hook="postrouting", prio=100, policy="accept"),
            # Per-function bandwidth: each instance's own token buckets, both ways.
            rule("forward", from_bridge, _limit_by("saddr", "@bandwidth_out"), {"drop": None}),
            rule("forward", to_bridge, _limit_by("daddr", "@bandwidth_in"), {"drop": None}),
            # Forwarded: from instances through the policy; to instances only answers.
            rule("forward", from_bridge, {"jump": {"target": "egress"}}),
            rule("forward", to_bridge, ESTABLISHED, ACCEPT),
            rule("forward", to_bridge, {"drop": None}),
            # Forwarding was off before fgd: it stays off for everything but the instances (a node
            # with two interfaces does not become a router between them).
            *(
                [
                    rule(
                        "forward",
                        _match(_meta("iifname"), bridge, "!="),
                        _match(_meta("oifname"), bridge, "!="),
                        {"drop": None},
                    )
                ]
                if self._forwarding_was != "1"
                else []
            ),
            # Instances have no IPv6; whatever IPv6 reaches the bridge goes nowhere.
            rule("egress", _match(_meta("nfproto"), "ipv6"), {"drop": None}),
            rule("egress", ESTABLISHED, ACCEPT),
            rule("egress", _match({"ct": {"key": "state"}}, "new", "in"), count_limit, DENY),
            rule("egress", _match(DESTINATION, "@node_allow"), ACCEPT),
            rule("egress", _match(SOURCE_DESTINATION, "@fn_allow"), ACCEPT),
            *[rule("egress", _match(_field("ip", "daddr"), "@resolvers"), port, ACCEPT) for _, port in dns],
            rule("egress", _match(_field("ip", "daddr"), "@denied"), DENY),
            rule("egress", ACCEPT),
            # Addressed to the node itself (any of its addresses, the bridge's too).
            rule("input", from_bridge, {"jump": {"target": "to_node"}}),
            rule("to_node", _match(_meta("nfproto"), "ipv6"), {"drop": None}),
            rule("to_node", ESTABLISHED, ACCEPT),
            # The same per-instance budget as going out: an allowed node port or the DNS forwarder
            # must not let one instance fill the node's connection-tracking table.
            rule("to_node", _match({"ct": {"key": "state"}}, "new", "in"), count_limit, DENY),
            # The DNS forwarder (fgd.dnsforward), when the node's resolvers are on loopback.
            *[
                rule("to_node", _match(_field("ip", "daddr"), self.gateway), port, ACCEPT)
                for proto, port in dns
                if self.forwarded and proto == "udp"
            ],
            rule("to_node", _match(DESTINATION, "@node_allow_self"), ACCEPT),
            rule("to_node", _match(SOURCE_DESTINATION, "@fn_allow_self"), ACCEPT),
            rule("to_node", DENY),
            rule("deny", _match(_meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}}),
            rule("deny", {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}),
            rule(
                "postrouting",
                _match(_field("ip", "saddr"), _prefix(self.subnet)),
                _match(_meta("oifname"), bridge, "!="),
                {"masquerade": None},
            ),
            # Bridged traffic between two instances' ports never passes the inet hooks: dropped here.
            {"add": {"table": {"family": "bridge", "name": table}}},
            {
                "add": {
                    "chain": {
                        "family": "bridge",
                        "table": table,
                        "name": "forward",
                        "type": "filter",
                        "hook": "forward",
                        "prio": -200,
                        "policy": "accept",
                    }
                }
            },
            {
                "add": {
                    "rule": {
                        "family": "bridge",
                        "table": table,
                        "chain": "forward",
                        "expr": [
                            _match(_meta("iifname"), config.veth_prefix + "*"),
                            _match(_meta("oifname"), config.veth_prefix + "*"),
                            {"drop": None},
                        ],
                    }
                }
            },
        ]
        return commands

    # Instances ------------------------------------------------------------------------

    def _take_address(self) -> str:
        """Round-robin, so an address freed a moment ago (its conntrack entries) comes back last."""
        for step in range(min(self._count, len(self._taken) + 1)):
            offset = (self._next + step) % self._count
            address = str(ipaddress.IPv4Address(self._first + offset))
            if address not in self._taken:
                self._next = (offset + 1) % self._count
                self._taken.add(address)
                return address
        raise NetworkError(f"all {self._count} addresses of [network] subnet {self.subnet} are in use")

    def attach(self, instance_id: str, pid: int) -> Lease:
        """Give the instance whose sandbox process is `pid` its interface (a pooled instance)."""
        if self._ipr is None:
            raise NetworkError("instance networking is not set up")
        with self._lock:
            address = self._take_address()
        ifname = (self.config.veth_prefix + instance_id)[:15]
        lease = Lease(instance_id, ifname, address)
        try:
            netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._give_back(address)
            raise NetworkError(f"the instance's network namespace is gone: {exc.strerror}") from None
        if os.fstat(netns).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
            # The pid is no longer the instance's (it died and the number was reused): never give
            # the node's own namespace an instance's interface, address and routes.
            os.close(netns)
            self._give_back(address)
            raise NetworkError("the instance has no network namespace of its own (it is gone)")
        try:
            with self._lock:
                # The peer is made inside the instance's namespace: it never exists on the node.
                self._ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": INSTANCE_IFNAME, "net_ns_fd": netns})
                index = self._ipr.link_lookup(ifname=ifname)[0]
                self._ipr.link("set", index=index, master=self._bridge_index, state="up")
            self._configure_inside(netns, address)
        except Exception as exc:  # noqa: BLE001 - netlink, sysctl or a vanished namespace: all said the same way
            with self._lock, contextlib.suppress(Exception):
                self._ipr.link("del", ifname=ifname)
            self._give_back(address)
            raise NetworkError(f"cannot give the instance its interface: {exc}") from None
        finally:
            os.close(netns)
        self.leases[instance_id] = lease
        return lease

    def _configure_inside(self, netns: int, address: str) -> None:
        """Inside the instance: a /32 address and the bridge reached on-link, so everything it sends,
        to other instances too, is routed by the node through the policy (never bridged past it)."""
        from pyroute2 import IPRoute

        with in_netns(netns):
            # Before the link is up, so it never gets an IPv6 link-local address; no redirects
            # may teach it a direct path to another instance.
            Path(f"/proc/sys/net/ipv6/conf/{INSTANCE_IFNAME}/disable_ipv6").write_text("1")
            for scope in ("all", INSTANCE_IFNAME):
                Path(f"/proc/sys/net/ipv4/conf/{scope}/accept_redirects").write_text("0")
            with IPRoute() as inner:
                index = inner.link_lookup(ifname=INSTANCE_IFNAME)[0]
                inner.addr("add", index=index, address=address, prefixlen=32)
                inner.link("set", index=index, state="up")
                inner.route("add", dst=f"{self.gateway}/32", oif=index, scope=253)
                inner.route("add", dst="0.0.0.0/0", gateway=self.gateway, oif=index)

    def _give_back(self, address: str) -> None:
        with self._lock:
            self._taken.discard(address)

    def specialize(
        self, lease: Lease | None, function: tuple[str, str, str], mode: Mode, network: FunctionNetwork | None
    ) -> bool:
        """The instance of `lease` is given a function: its own destinations are allowed and its
        bandwidth limited (for `outbound`). Whether it keeps its interface."""
        if lease is None:
            return False
        lease.function = function
        if mode != OUTBOUND or self._nft is None:
            return False
        commands: list[dict] = []
        # Only what the operator still grants (a function stored before the grant was narrowed).
        allow = [d for d in network.allow if within(d, self.config.function_allow_within)] if network else []
        if network is not None and len(allow) < len(network.allow):
            log.warning("function %s: network.allow entries outside [network] function_allow_within ignored", function)
        # Noted on the lease only once loaded (below): release deletes what the lease names, and
        # an address whose deletion fails is retired.
        elements = [e for d in allow for e in destination_elements(d, lease.address)]
        single = [d for d in allow if d.network.prefixlen == 32]
        node_elements = [e for d in single for e in destination_elements(d, lease.address)]
        if elements:
            commands.append({"add": {"element": self._set("fn_allow", elements)}})
        if node_elements:
            commands.append({"add": {"element": self._set("fn_allow_self", node_elements)}})
        if network is not None and network.bandwidth_kbps:
            rate = network.bandwidth_kbps * 1000 // 8
            for direction in ("out", "in"):
                name = f"bw_{lease.instance_id}_{direction}"
                commands += [
                    {
                        "add": {
                            "limit": {
                                "family": "inet",
                                "table": self.config.table,
                                "name": name,
                                "rate": rate,
                                "per": "second",
                                "rate_unit": "bytes",
                                # A tenth of a second's worth at once (at least 16 KiB).
                                "burst": max(rate // 10, 16384),
                                "burst_unit": "bytes",
                                "inv": True,
                            }
                        }
                    },
                    {"add": {"element": self._set(f"bandwidth_{direction}", [[lease.address, name]])}},
                ]
        if commands:
            from fgd.nft import NftError

            try:
                self._nft.run(commands)
            except NftError as exc:
                raise NetworkError(f"cannot apply the function's network rules: {exc}") from None
            # One batch: all of it is loaded.
            lease.elements, lease.node_elements = elements, node_elements
            lease.limited = bool(network is not None and network.bandwidth_kbps)
        return True

    def enter_policy(self, policy: EnterPolicy, keep_interface: bool) -> EnterPolicy:
        """The sandbox's part: keep the interface (and get a resolv.conf) or lose it."""
        if not keep_interface:
            return policy
        etc = {**policy.etc_files, "resolv.conf": self.resolv_conf()}
        return msgspec.structs.replace(policy, interfaces=True, etc_files=etc)

    @property
    def forwarded(self) -> list[str]:
        """The node's loopback resolvers (a local stub): instances reach them through the daemon's
        forwarder on the bridge address (fgd.dnsforward)."""
        return [r for r in self.resolvers if _loopback(r)]

    def resolv_conf(self) -> str:
        servers = [r for r in self.resolvers if not _loopback(r)]
        if self.forwarded:
            servers.insert(0, self.gateway)
        lines = [f"nameserver {server}" for server in servers[:3]]
        return "\n".join([*lines, "options timeout:2 attempts:2", ""])

    def _set(self, name: str, elements: list[dict]) -> dict:
        return {"family": "inet", "table": self.config.table, "name": name, "elem": elements}

    def drop_interface(self, lease: Lease) -> None:
        """A `none` function's instance left its interface behind: delete the pair (its address
        stays taken until the instance is gone)."""
        if self._ipr is None:
            return
        with self._lock, contextlib.suppress(Exception):
            self._ipr.link("del", ifname=lease.ifname)

    def release(self, lease: Lease) -> None:
        """The instance is gone (or going): its counters are kept, its interface, rules and address go."""
        self.leases.pop(lease.instance_id, None)
        if self._ipr is None:
            return
        with self._lock:
            with contextlib.suppress(Exception):
                stats = self._read_stats([lease.ifname]).get(lease.ifname)
                if stats is not None:
                    lease.stats = stats
            with contextlib.suppress(Exception):
                self._ipr.link("del", ifname=lease.ifname)
        if lease.function is not None:
            total = self.totals.setdefault(lease.function, [0, 0, 0, 0])
            for i, value in enumerate(lease.stats):
                total[i] += value
        retire = ""
        if lease.elements and self._nft is not None:
            try:
                deletions = [{"delete": {"element": self._set("fn_allow", lease.elements)}}]
                if lease.node_elements:
                    deletions.append({"delete": {"element": self._set("fn_allow_self", lease.node_elements)}})
                self._nft.run(deletions)
            except Exception as exc:  # noqa: BLE001 - then the address keeps the function's allow list
                retire = f"its allowed destinations are still in the firewall ({exc})"
        if lease.limited and self._nft is not None:
            for direction in ("out", "in"):
                name = f"bw_{lease.instance_id}_{direction}"
                with contextlib.suppress(Exception):
                    self._nft.run(
                        [
                            {"delete": {"element": self._set(f"bandwidth_{direction}", [lease.address])}},
                            {"delete": {"limit": {"family": "inet", "table": self.config.table, "name": name}}},
                        ]
                    )
        # After its interface and rules are gone (nothing new can be tracked for it), before the
        # address can be given to another instance.
        try:
            self.forget_connections(ipaddress.IPv4Network(lease.address))
        except Exception as exc:  # noqa: BLE001 - then its connections would pass for the next one's
            retire = retire or f"its tracked connections cannot be deleted ({exc})"
        if retire:
            # Never given to another instance, which would inherit what this one was allowed.
            log.error("instance address %s is retired until the daemon restarts: %s", lease.address, retire)
            return
        self._give_back(lease.address)

    # Traffic counters ------------------------------------------------------------------

    def _read_stats(self, names: list[str] | None = None) -> dict[str, tuple[int, int, int, int]]:
        assert self._ipr is not None
        found = {}
        links = self._ipr.get_links() if names is None or len(names) != 1 else self._ipr.get_links(ifname=names[0])
        for link in links:
            name = link.get_attr("IFLA_IFNAME") or ""
            if not name.startswith(self.config.veth_prefix):
                continue
            stats = link.get_attr("IFLA_STATS64")
            if stats is not None:
                found[name] = (stats["rx_bytes"], stats["rx_packets"], stats["tx_bytes"], stats["tx_packets"])
        return found

    def refresh_stats(self) -> None:
        if self._ipr is None:
            return
        with self._lock:
            try:
                stats = self._read_stats()
            except Exception as exc:  # noqa: BLE001 - counters are best effort; the next pass tries again
                log.debug("reading interface counters failed: %s", exc)
                return
        for lease in list(self.leases.values()):
            if lease.ifname in stats:
                lease.stats = stats[lease.ifname]

    def traffic(self) -> dict[tuple[str, str, str], list[int]]:
        """Per function: bytes and packets the instances sent (out) and received (in), so far."""
        result = {key: list(values) for key, values in self.totals.items()}
        for lease in list(self.leases.values()):
            if lease.function is None:
                continue
            total = result.setdefault(lease.function, [0, 0, 0, 0])
            for i, value in enumerate(lease.stats):
                total[i] += value
        return result

    def metric_lines(self, label, alive) -> list[str]:
        """Prometheus lines: fgd_function_network_{bytes,packets}_total{function, direction}, for
        the functions `alive` says exist (a deleted function's totals are dropped)."""
        for key in [k for k in self.totals if not alive(k)]:
            del self.totals[key]
        traffic = {key: values for key, values in self.traffic().items() if alive(key)}
        out = []
        for metric, what, offset in (("bytes", "Bytes", 0), ("packets", "Packets", 1)):
            name = f"fgd_function_network_{metric}_total"
            out += [
                f"# HELP {name} {what} sent (out) and received (in) by a function's instances.",
                f"# TYPE {name} counter",
            ]
            for key, values in sorted(traffic.items()):
                out.append(f'{name}{{function="{label(key)}",direction="out"}} {values[offset]}')
                out.append(f'{name}{{function="{label(key)}",direction="in"}} {values[offset + 2]}')
        return out

    def health(self) -> dict:
        return {
            "available": self.available,
            "detail": self.detail,
            "default_mode": self.config.default_mode if self.config.allow_outbound else NONE,
            "subnet": str(self.subnet),
            "interfaces": len(self.leases),
            "resolvers": self.resolvers,
        }


def _loopback(address: str) -> bool:
    return ipaddress.IPv4Address(address).is_loopback
