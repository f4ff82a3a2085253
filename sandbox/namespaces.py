"""Namespaces: the instance gets its own mount, pid, net, ipc, uts and cgroup views."""

from __future__ import annotations

import os
import socket

from sandbox._libc import unshare

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

INSTANCE_NAMESPACES = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP
ALL_NAMESPACES = INSTANCE_NAMESPACES | CLONE_NEWUSER


def enter_new_namespaces() -> None:
    """Unshare every instance namespace; the caller's next child is PID 1 of the new pid namespace."""
    unshare(INSTANCE_NAMESPACES)


def set_hostname(name: str) -> None:
    socket.sethostname(name)


def available() -> dict[str, bool]:
    """Which namespace kinds this kernel offers (for `fgd doctor`)."""
    kinds = ["mnt", "pid", "net", "ipc", "uts", "cgroup", "user"]
    return {kind: os.path.exists(f"/proc/self/ns/{kind}") for kind in kinds}
