"""Namespaces: the instance gets its own mount, pid, net, ipc, uts and cgroup views."""

from __future__ import annotations

import os
import socket

from sandbox._libc import setns, unshare

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
    """Unshare every instance namespace but the pid one, which the caller already heads as its PID 1
    (the zygote forked it so: `PidNamespaceForker`)."""
    unshare(INSTANCE_NAMESPACES & ~CLONE_NEWPID)


class PidNamespaceForker:
    """Forks children that are PID 1 of their own new pid namespace, for a long-lived parent
    (the zygote) whose other children stay in its own namespace.

    unshare(CLONE_NEWPID) changes only where the caller's *next* children go; setns back to the
    caller's own namespace (allowed: it is the caller's active one) undoes it after the fork.
    The child is the caller's own child, so the caller reaps it and learns its exit status
    directly: no waiter process stands between them.
    """

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def fork(self) -> int:
        """os.fork() into a new pid namespace; raises OSError (nothing forked) if it cannot be made."""
        unshare(CLONE_NEWPID)
        try:
            pid = os.fork()
        finally:
            if os.getpid() != 1:
                setns(self._own, CLONE_NEWPID)
        return pid


def set_hostname(name: str) -> None:
    socket.sethostname(name)


def available() -> dict[str, bool]:
    """Which namespace kinds this kernel offers (for `fgd doctor`)."""
    kinds = ["mnt", "pid", "net", "ipc", "uts", "cgroup", "user"]
    return {kind: os.path.exists(f"/proc/self/ns/{kind}") for kind in kinds}
