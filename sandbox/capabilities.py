"""Privileges: no_new_privs, every capability set emptied, death with the parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

import prctl

from sandbox._libc import check, libc
from sandbox._libc import prctl as raw_prctl

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd")

# Issue 15: set once this process (or the one it was forked from: the sandbox's PID 1 drops it
# before it forks the worker) has emptied the bounding set and read it back empty. No process
# can raise its bounding set again, so the worker's specialisation need not redo it.
bounding_empty = False


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


# Made once, in the zygote: a ctypes array type and a libc symbol cost far more to make the
# first time (in every worker) than the system calls themselves.
_CapSets = _CapData * 2
_capget = libc.capget
_capset = libc.capset
_prctl = libc["prctl"]  # its own function object: argtypes of its own
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
PR_CAPBSET_DROP = 24


def no_new_privs() -> None:
    raw_prctl(PR_SET_NO_NEW_PRIVS, 1)


def drop_bounding() -> None:
    """Empty the bounding set (needs CAP_SETPCAP, so before the uid changes), ambient and inheritable."""
    for cap in range(_last_cap() + 1):
        # The raw call (python-prctl's costs ten times more, on the path of every instance made);
        # a failure is caught by reading the set back below, and by drop_remaining.
        _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    # python-prctl has no ambient API; clear it with the raw prctl.
    raw_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapSets()
    check(_capget(ctypes.byref(header), data), "capget")
    for part in data:
        part.inheritable = 0
    check(_capset(ctypes.byref(header), data), "capset")
    global bounding_empty
    bounding_empty = _read_sets()["CapBnd"] == 0


_LAST_CAP: list[int] = []


def _last_cap() -> int:
    """The highest capability number this kernel has (read once: forked children share it)."""
    if not _LAST_CAP:
        with open(CAP_LAST_CAP_FILE) as handle:
            _LAST_CAP.append(int(handle.read()))
    return _LAST_CAP[0]


def drop_remaining() -> None:
    """Empty every set a process may always lower, and check that nothing is left.

    Issue 15: one capset and one capget (not a capget/capset pair per set and a read of
    /proc/self/status). The ambient set is always a subset of permitted and inheritable, so
    with both empty it is empty; the bounding set is read back too unless it was found empty
    before (`bounding_empty`: it can never grow back).
    """
    raw_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapSets()
    check(_capset(ctypes.byref(header), data), "capset")
    check(_capget(ctypes.byref(header), data), "capget")
    for part in data:
        for name, value in (("CapInh", part.inheritable), ("CapPrm", part.permitted), ("CapEff", part.effective)):
            if value:
                raise OSError(f"{name} is {value:#x} after dropping every capability")
    if not bounding_empty:
        for name, value in _read_sets().items():
            if value:
                raise OSError(f"{name} is {value:x} after dropping every capability")


def _read_sets() -> dict[str, int]:
    """The capability sets as /proc/self/status shows them."""
    sets = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in CAP_SETS:
                sets[name] = int(value, 16)
    return sets


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL when the parent dies; if it already did, die now (the race pdeathsig leaves)."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(1)


# Read when the zygote imports this module, so no instance reads it again (if it fails here,
# it is read, and fails naming why, when a sandbox is built).
with contextlib.suppress(OSError, ValueError):
    _last_cap()
