"""cgroup v1: per instance, one directory in each of the memory, pids, cpu and freezer hierarchies.

Each hierarchy is mounted separately and the daemon may sit in a different
cgroup in each; the subtree is created beneath the daemon's own cgroup in
every one of them (`fgd`, or `fgd-<pid>` where the daemon's cgroup is the
hierarchy's root, so that no two daemons share one).
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


class V1:
    version = 1

    def __init__(self, hierarchies: dict[str, tuple[Path, str]], owner: int | None = None) -> None:
        owner = os.getpid() if owner is None else owner
        # controller -> <mount>/<daemon's cgroup>
        self.parents = {c: mount / own.lstrip("/") for c, (mount, own) in hierarchies.items()}
        # controller -> <mount>/<daemon's cgroup>/fgd (or fgd-<pid> at a hierarchy's root)
        self.bases = {c: self.parents[c] / subtree_name(own, owner) for c, (_mount, own) in hierarchies.items()}
        self.memsw = False

    def describe(self) -> str:
        return "cgroup v1 at " + ", ".join(str(p) for p in self.bases.values())

    def setup(self, node_pids: int | None = None) -> None:
        """Create the subtree in each hierarchy; cap the tasks of all instances together at `node_pids`."""
        for base in self.bases.values():
            try:
                base.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create {base}: {exc.strerror}") from None
        self.memsw = (self.bases["memory"] / "memory.memsw.limit_in_bytes").exists()
        if node_pids is not None:
            write(self.bases["pids"] / "pids.max", str(node_pids))

    def teardown(self) -> None:
        """Remove our own (empty) `fgd-<pid>` subtree at exit; one still busy stays for the next start.

        A plain `fgd` subtree beneath a cgroup is shared by every daemon placed in that cgroup
        (two daemons started from one shell, one service's test daemons): it stays, or the
        others would lose the directory their next instance is created in, and its task cap.
        """
        for base in self.bases.values():
            if base.name == FGD_SUBTREE:
                continue
            with contextlib.suppress(CgroupError):
                remove_dir(base)

    def _paths(self, name: str) -> dict[str, Path]:
        check_name(name)
        return {c: base / name for c, base in self.bases.items()}

    def create(self, name: str) -> None:
        for path in self._paths(name).values():
            try:
                path.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise CgroupError(f"cannot create {path}: {exc.strerror}") from None

    def place(self, name: str, pid: int) -> None:
        for path in self._paths(name).values():
            write(path / "cgroup.procs", str(pid))

    def set_limits(self, name: str, limits: Limits) -> None:
        paths = self._paths(name)
        memory = paths["memory"]
        current = int(read(memory / "memory.limit_in_bytes"))
        memory_files = ["memory.limit_in_bytes"]
        if self.memsw:
            # memsw may never be below the memory limit: order the writes by direction.
            memory_files = ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
            if limits.memory_bytes < current:
                memory_files.reverse()
        for filename in memory_files:
            write(memory / filename, str(limits.memory_bytes))
        write(paths["pids"] / "pids.max", str(limits.pids))
        write(paths["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota = -1 if limits.cpu_millicores is None else limits.cpu_millicores * CPU_PERIOD_US // 1000
        write(paths["cpu"] / "cpu.cfs_quota_us", str(quota))

    def oom_events_path(self, name: str) -> Path:
        """The flat-keyed file whose `oom_kill` counts the OOM kills in the cgroup."""
        return self._paths(name)["memory"] / "memory.oom_control"

    def oom_kills(self, name: str) -> int:
        return key_value(self.oom_events_path(name), "oom_kill")

    def memory_peak_path(self, name: str) -> Path:
        return self._paths(name)["memory"] / "memory.max_usage_in_bytes"

    def memory_peak(self, name: str) -> int:
        return int(read(self.memory_peak_path(name)))

    def pids(self, name: str) -> list[int]:
        return procs(self._paths(name)["freezer"])

    def kill(self, name: str) -> None:
        """Lift the CPU quota, freeze, SIGKILL every process, thaw. Never waits.

        A throttled cgroup spends its exit in the quota too (a fork bomb lingered
        seconds after its answer), so the quota goes first. The freezer stops
        forks while we signal; we do not wait for FROZEN (that blocked the event
        loop): a process forked before the freeze took hold is found and killed
        by `remove`, which the caller polls until the cgroup is gone.
        """
        paths = self._paths(name)
        if not any(path.is_dir() for path in paths.values()):
            raise CgroupError(f"no cgroup {name} in {', '.join(str(b) for b in self.bases.values())}")
        quota = paths["cpu"] / "cpu.cfs_quota_us"
        if quota.exists():
            with contextlib.suppress(CgroupError):
                write(quota, "-1")
        state = paths["freezer"] / "freezer.state"
        frozen = False
        if state.exists():
            with contextlib.suppress(CgroupError):
                write(state, "FROZEN")
                frozen = True
        # The freezer's list first; the others catch a hierarchy the process was never moved into.
        for controller in ("freezer", "pids", "memory", "cpu"):
            kill_procs(paths[controller])
        if frozen:
            # Killed tasks die only when thawed.
            write(state, "THAWED")

    def names(self) -> list[str]:
        """Instance cgroups present in any hierarchy's subtree."""
        found: set[str] = set()
        for base in self.bases.values():
            if base.is_dir():
                found.update(p.name for p in base.iterdir() if p.is_dir())
        return sorted(found)

    def remove(self, name: str) -> bool:
        """Remove the instance's directory in every hierarchy, each on its own; False while any is busy.

        A busy one still holds processes (a fork that raced the kill, or one in
        its exit): they are killed again, and the caller asks later.
        """
        done = [remove_dir(path) for path in self._paths(name).values()]
        if all(done):
            return True
        with contextlib.suppress(CgroupError):
            self.kill(name)
        return False

    def abandoned(self, alive: Callable[[int], bool]) -> list[Path]:
        """`fgd-<pid>` subtrees of dead daemons beside ours (only at hierarchy roots)."""
        found: list[Path] = []
        for controller, base in self.bases.items():
            if base.name != "fgd":
                found += [p for p in abandoned_subtrees(self.parents[controller], alive) if p != base]
        return found

    remove_abandoned = staticmethod(remove_abandoned)
