"""cgroup v2: one directory per instance under <own>/fgd; the daemon in <own>/supervisor.

The "no internal processes" rule means a cgroup that delegates controllers to
children may not hold processes itself, so the daemon first moves itself (and
anything else in its cgroup) into a `supervisor` leaf. At the hierarchy's root
(which the rule exempts) nothing is moved and the subtree is `fgd-<pid>`, this
daemon's alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from sandbox.cgroups._base import (
    CPU_PERIOD_US,
    FGD_SUBTREE,
    CgroupError,
    Limits,
    abandoned_subtrees,
    check_name,
    key_value,
    kill_procs,
    procs,
    read,
    remove_abandoned,
    remove_dir,
    subtree_name,
    write,
)

CONTROLLERS = ("memory", "pids", "cpu")
SUPERVISOR = "supervisor"


class V2:
    version = 2

    def __init__(self, mount: Path, own: str, owner: int | None = None) -> None:
        self.own = mount / own.lstrip("/")
        self.at_root = not own.strip("/")
        self.base = self.own / subtree_name(own, os.getpid() if owner is None else owner)
        self.controllers: list[str] = []

    def describe(self) -> str:
        return f"cgroup v2 at {self.base}"

    def setup(self, node_pids: int | None = None) -> None:
        """Delegate controllers to the subtree; cap the tasks of all instances together at `node_pids`."""
        available = read(self.own / "cgroup.controllers").split()
        self.controllers = [c for c in CONTROLLERS if c in available]
        missing = {"memory", "pids"} - set(self.controllers)
        if missing:
            raise CgroupError(
                f"controllers {', '.join(sorted(missing))} are not delegated to {self.own} "
                "(under systemd: Delegate=yes)"
            )
        if not self.at_root:
            supervisor = self.own / SUPERVISOR
            supervisor.mkdir(exist_ok=True)
            for pid in procs(self.own):
                write(supervisor / "cgroup.procs", str(pid))
        enable = " ".join(f"+{c}" for c in self.controllers)
        write(self.own / "cgroup.subtree_control", enable)
        self.base.mkdir(exist_ok=True)
        write(self.base / "cgroup.subtree_control", enable)
        if node_pids is not None:
            write(self.base / "pids.max", str(node_pids))

    def teardown(self) -> None:
        """Remove our own (empty) `fgd-<pid>` subtree at exit; a shared `fgd` stays (see V1.teardown)."""
        if self.base.name == FGD_SUBTREE:
            return
        with contextlib.suppress(CgroupError):
            remove_dir(self.base)

    def path(self, name: str) -> Path:
        check_name(name)
        return self.base / name

    def create(self, name: str) -> None:
        try:
            self.path(name).mkdir()
        except OSError as exc:
            raise CgroupError(f"cannot create {self.path(name)}: {exc.strerror}") from None

    def place(self, name: str, pid: int) -> None:
        write(self.path(name) / "cgroup.procs", str(pid))

    def set_limits(self, name: str, limits: Limits) -> None:
        path = self.path(name)
        write(path / "memory.max", str(limits.memory_bytes))
        if (path / "memory.swap.max").exists():
            write(path / "memory.swap.max", "0")
        # The OOM killer takes the whole instance, never half of it.
        write(path / "memory.oom.group", "1")
        write(path / "pids.max", str(limits.pids))
        if "cpu" in self.controllers:
            quota = "max" if limits.cpu_millicores is None else str(limits.cpu_millicores * CPU_PERIOD_US // 1000)
            write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def oom_events_path(self, name: str) -> Path:
        """The flat-keyed file whose `oom_kill` counts the OOM kills in the cgroup."""
        return self.path(name) / "memory.events"

    def oom_kills(self, name: str) -> int:
        return key_value(self.oom_events_path(name), "oom_kill")

    def memory_peak_path(self, name: str) -> Path:
        peak = self.path(name) / "memory.peak"
        # memory.peak is new in 5.19; before it, the current usage is the best we have.
        return peak if peak.exists() else self.path(name) / "memory.current"

    def memory_peak(self, name: str) -> int:
        return int(read(self.memory_peak_path(name)))

    def pids(self, name: str) -> list[int]:
        return procs(self.path(name))

    def kill(self, name: str) -> None:
        """Lift the CPU quota (a throttled cgroup exits slowly), then kill; never waits."""
        path = self.path(name)
        if not path.is_dir():
            raise CgroupError(f"no cgroup {path}")
        if (path / "cpu.max").exists():
            with contextlib.suppress(CgroupError):
                write(path / "cpu.max", f"max {CPU_PERIOD_US}")
        if (path / "cgroup.kill").exists():
            write(path / "cgroup.kill", "1")
            return
        # Kernels before 5.14: freeze, kill each, thaw; `remove` kills what raced the freeze.
        write(path / "cgroup.freeze", "1")
        kill_procs(path)
        write(path / "cgroup.freeze", "0")

    def names(self) -> list[str]:
        """Instance cgroups present in the subtree."""
        return sorted(p.name for p in self.base.iterdir() if p.is_dir()) if self.base.is_dir() else []

    def remove(self, name: str) -> bool:
        """rmdir the instance's cgroup; while it is busy, kill what is left and say False."""
        if remove_dir(self.path(name)):
            return True
        with contextlib.suppress(CgroupError):
            self.kill(name)
        return False

    def abandoned(self, alive: Callable[[int], bool]) -> list[Path]:
        """`fgd-<pid>` subtrees of dead daemons beside ours (only at the hierarchy's root)."""
        if not self.at_root:
            return []
        return [p for p in abandoned_subtrees(self.own, alive) if p != self.base]

    remove_abandoned = staticmethod(remove_abandoned)
