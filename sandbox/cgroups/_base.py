"""What both cgroup backends share: the limits and the error type."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Callable
from pathlib import Path

import msgspec

FGD_SUBTREE = "fgd"
# The CFS bandwidth period of an instance's CPU share (FunctionGraph's millicores per memory
# size), the kernel's default. Measured against 10 ms (issue 15): a shorter period cuts the
# stall of an instance over its quota (a Custom C bootstrap at 128 MB and ~850 req/s: p99 33
# -> 6 ms), but a start with the pool empty, whose containment and specialisation come as one
# burst of CPU, went from 13.5 to 47 ms p50 (Node.js and HTTP functions' starts likewise).
CPU_PERIOD_US = 100_000
# A v1 limit this high (the kernel's PAGE_COUNTER_MAX in bytes, rounded) means "no limit".
UNLIMITED = 1 << 60


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file."""


class Limits(msgspec.Struct, frozen=True):
    memory_bytes: int
    pids: int = 1024
    cpu_millicores: int | None = None


def write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror}") from None


def key_value(path: Path, key: str) -> int:
    """An integer from a flat-keyed file such as memory.events."""
    return parse_key_value(read(path), key)


def parse_key_value(text: str, key: str) -> int:
    """An integer from the text of a flat-keyed file (0 when the key is absent)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def procs(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def remove_dir(path: Path) -> bool:
    """rmdir a cgroup; False while it still has processes."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise CgroupError(f"cannot remove {path}: {exc.strerror}") from None
    return True


def check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name.startswith(FGD_SUBTREE):
        raise CgroupError(f"invalid cgroup name {name!r}")


def pid_namespace() -> int:
    """The inode of this process's pid namespace: pids mean something only within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def subtree_name(own: str, owner: int) -> str:
    """`fgd` beneath a cgroup given to the daemon; `fgd-<pid>-<pid namespace>` at a hierarchy's root.

    On hybrid v1 hosts the freezer, pids and cpu hierarchies often place every
    process at the root: a plain `fgd` there would be shared by every daemon on
    the host (and its node-wide limits with it). The pid makes it this daemon's;
    the pid namespace says where that pid means something, so a daemon in a
    container never takes a host daemon's subtree (whose pid it cannot see) for
    a dead one's.
    """
    return FGD_SUBTREE if own.strip("/") else f"{FGD_SUBTREE}-{owner}-{pid_namespace()}"


def subtree_owner(name: str) -> int | None:
    """The daemon pid in a root-level subtree name of a daemon in this pid namespace, else None.

    `fgd-<pid>-<namespace>` of another pid namespace is None: its daemon's liveness cannot be
    told from here. `fgd-<pid>` (releases before the namespace was in the name) counts as ours.
    """
    prefix, _, rest = name.partition("-")
    pid, _, namespace = rest.partition("-")
    if prefix != FGD_SUBTREE or not pid.isdigit():
        return None
    if namespace and (not namespace.isdigit() or int(namespace) != pid_namespace()):
        return None
    return int(pid)


def kill_procs(path: Path) -> int:
    """SIGKILL every process listed in `path`'s cgroup.procs; how many were signalled."""
    signalled = 0
    for pid in procs(path):
        try:
            os.kill(pid, signal.SIGKILL)
            signalled += 1
        except ProcessLookupError:
            pass
    return signalled


def abandoned_subtrees(parent: Path, alive: Callable[[int], bool]) -> list[Path]:
    """Root-level `fgd-<pid>` subtrees beside ours whose daemon is gone."""
    found = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        owner = subtree_owner(entry.name)
        if owner is not None and entry.is_dir() and not alive(owner):
            found.append(entry)
    return found


def remove_abandoned(subtree: Path) -> bool:
    """Kill, thaw and remove every cgroup of a dead daemon's subtree, then the subtree; False while busy."""
    done = True
    for child in [p for p in subtree.iterdir() if p.is_dir()] if subtree.is_dir() else []:
        quota = child / "cpu.cfs_quota_us"
        if quota.exists():
            with contextlib.suppress(CgroupError):
                write(quota, "-1")
        kill_procs(child)
        for state, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            if (child / state).exists():
                with contextlib.suppress(CgroupError):
                    write(child / state, value)
        done = remove_dir(child) and done
    return remove_dir(subtree) if done else False
