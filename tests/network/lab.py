"""The network lab (issue 14) without pytest: namespaces, their veth, the outside's servers.

    outside namespace (fgdt<pid>o)               node namespace (fgdt<pid>n)
    lo: 198.51.100.10 (HTTP), 198.51.100.53 (DNS),  eth0 192.168.77.5/24, default via .1
        169.254.169.254 (fake metadata)             fgd serve (its bridge, tables, instances)
    up0: 192.168.77.1/24 (the node's router),
         192.168.77.2/24 (a fake LAN host)  <== veth ==>

No packet leaves this machine: the node namespace's only uplink is the veth into the
outside namespace, which has no uplink at all. `lab_namespaces` moves the calling thread
into the node namespace for the block (sockets it opens and processes it starts are there);
both namespaces are deleted at the end, also on failure, and ones left by a process that is
gone are deleted first. Used by tests/network and bench/network.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil


class LabUnavailable(Exception):
    """This machine cannot host the lab (not root)."""


CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
PREFIX = "fgdt"
NODE_ADDRESS = "192.168.77.5"
OUTSIDE = Path(__file__).with_name("outside.py")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def remove_stale_labs() -> None:
    """Namespaces of test processes that are gone (a killed run)."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        name = entry.name
        owner = name[len(PREFIX) : -1]
        if name.startswith(PREFIX) and owner.isdigit() and not psutil.pid_exists(int(owner)):
            ip("netns", "del", name, check=False)


@dataclass
class Lab:
    node: str
    outside: str

    def node_links(self) -> list[str]:
        return [link["ifname"] for link in json.loads(ip("-n", self.node, "-j", "link", "show"))]

    def node_tables(self) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.node, "nft", "list", "tables"], capture_output=True, text=True
        )
        return done.stdout

    def outside_run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.outside, *argv], capture_output=True, text=True, timeout=20)


@contextlib.contextmanager
def lab_namespaces() -> Iterator[Lab]:
    if os.geteuid() != 0:
        raise LabUnavailable("the network lab needs root (network namespaces)")
    remove_stale_labs()
    lab = Lab(f"{PREFIX}{os.getpid()}n", f"{PREFIX}{os.getpid()}o")
    server = None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    entered = False
    try:
        ip("netns", "add", lab.outside)
        ip("netns", "add", lab.node)
        o, n = ("-n", lab.outside), ("-n", lab.node)
        # Made inside the outside namespace, its peer directly in the node's: never on this machine's own.
        ip(*o, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", lab.node)
        for address in ("198.51.100.10/32", "198.51.100.53/32", "169.254.169.254/32"):
            ip(*o, "addr", "add", address, "dev", "lo")
        ip(*o, "addr", "add", "192.168.77.1/24", "dev", "up0")
        ip(*o, "addr", "add", "192.168.77.2/24", "dev", "up0")
        ip(*o, "link", "set", "lo", "up")
        ip(*o, "link", "set", "up0", "up")
        ip(*n, "addr", "add", f"{NODE_ADDRESS}/24", "dev", "eth0")
        ip(*n, "link", "set", "lo", "up")
        ip(*n, "link", "set", "eth0", "up")
        ip(*n, "route", "add", "default", "via", "192.168.77.1")
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.outside, sys.executable, str(OUTSIDE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        fd = os.open(NETNS_DIR / lab.node, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
            entered = True
        finally:
            os.close(fd)
        yield lab
    finally:
        if entered:
            setns(own)
        os.close(own)
        if server is not None:
            server.kill()
            server.wait()
        for name in (lab.node, lab.outside):
            ip("netns", "del", name, check=False)
