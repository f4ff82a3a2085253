"""The sandbox's own network steps.

Network mode `none`: a fresh network namespace with only loopback, brought up. A pooled
instance may already hold an interface (a veth the daemon made for mode `outbound`,
fgd.network): handed to a `none` function, the worker moves itself into a new, empty
network namespace (while it still may, before privileges drop) and checks only loopback is
there. Deleting the veth instead would cost the cold start 15-20 ms (the kernel waits for an
RCU grace period); a new namespace costs well under a millisecond, and the daemon deletes the
abandoned veth in the background. Only the sandbox's PID 1, which runs no function code,
stays in the old namespace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from sandbox._libc import unshare

CLONE_NEWNET = 0x40000000

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40
RTM_DELLINK = 17
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP | IFF_RUNNING))


def _delete_link(sock: socket.socket, index: int, seq: int) -> None:
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
    while True:
        reply = sock.recv(4096)
        offset = 0
        while offset + NLMSGHDR.size <= len(reply):
            length, kind, _flags, reply_seq, _pid = NLMSGHDR.unpack_from(reply, offset)
            if kind == NLMSG_ERROR and reply_seq == seq:
                code = -struct.unpack_from("=i", reply, offset + NLMSGHDR.size)[0]
                # ENODEV: gone already (the daemon removed the host end, which takes the pair).
                if code not in (0, errno.ENODEV):
                    raise OSError(code, f"removing interface {index}: {os.strerror(code)}")
                return
            offset += max(length, NLMSGHDR.size)


def leave_interfaces() -> None:
    """Mode `none`: nothing but loopback from here on (a new network namespace if need be)."""
    if all(name == "lo" for _index, name in socket.if_nameindex()):
        return
    unshare(CLONE_NEWNET)
    loopback_up()
    left = [name for _index, name in socket.if_nameindex() if name != "lo"]
    if left:
        raise OSError(errno.EBUSY, f"interfaces still present in network mode none: {', '.join(left)}")


def keep_only_loopback() -> None:
    """Remove every interface but `lo` (mode `none`); fail if one is left."""
    others = [(index, name) for index, name in socket.if_nameindex() if name != "lo"]
    if not others:
        return
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        for seq, (index, _name) in enumerate(others, start=1):
            _delete_link(sock, index, seq)
    left = [name for _index, name in socket.if_nameindex() if name != "lo"]
    if left:
        raise OSError(errno.EBUSY, f"interfaces still present in network mode none: {', '.join(left)}")
