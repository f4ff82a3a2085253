"""Privileges: no_new_privs, every capability set emptied, death with the parent."""

from __future__ import annotations

import contextlib
import os
import signal

import prctl

from sandbox._libc import prctl as raw_prctl

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"


def no_new_privs() -> None:
    raw_prctl(PR_SET_NO_NEW_PRIVS, 1)


def drop_bounding() -> None:
    """Empty the bounding set (needs CAP_SETPCAP, so before the uid changes), ambient and inheritable."""
    with open(CAP_LAST_CAP_FILE) as handle:
        last = int(handle.read())
    for cap in range(last + 1):
        # A capability this python-prctl does not know is skipped; the check in drop_remaining covers it.
        with contextlib.suppress(OSError, ValueError):
            prctl.capbset_drop(cap)
    # python-prctl has no ambient API; clear it with the raw prctl.
    raw_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    prctl.cap_inheritable.limit()


def drop_remaining() -> None:
    """Empty every set a process may always lower, and check that nothing is left."""
    raw_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    prctl.cap_inheritable.limit()
    prctl.cap_effective.limit()
    prctl.cap_permitted.limit()
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd") and int(value, 16):
                raise OSError(f"{name} is {value.strip()} after dropping every capability")


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL when the parent dies; if it already did, die now (the race pdeathsig leaves)."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(1)
