"""cgroup v1: per instance, one directory in each of the memory, pids, cpu and freezer hierarchies.

Each hierarchy is mounted separately and the daemon may sit in a different
cgroup in each; the `fgd` subtree is created beneath the daemon's own cgroup
in every one of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from sandbox.cgroups._base import (
    CPU_PERIOD_US,
    FGD_SUBTREE,
    CgroupError,
    Limits,
    check_name,
    key_value,
    procs,
    read,
    remove_dir,
    write,
)

FREEZE_WAIT = 1.0


class V1:
    version = 1

    def __init__(self, hierarchies: dict[str, tuple[Path, str]]) -> None:
        # controller -> <mount>/<daemon's cgroup>/fgd
        self.bases = {c: mount / own.lstrip("/") / FGD_SUBTREE for c, (mount, own) in hierarchies.items()}
        self.memsw = False

    def describe(self) -> str:
        return "cgroup v1 at " + ", ".join(str(p) for p in self.bases.values())

    def setup(self) -> None:
        for base in self.bases.values():
            try:
                base.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create {base}: {exc.strerror}") from None
        self.memsw = (self.bases["memory"] / "memory.memsw.limit_in_bytes").exists()

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

    def oom_kills(self, name: str) -> int:
        return key_value(self._paths(name)["memory"] / "memory.oom_control", "oom_kill")

    def memory_peak_path(self, name: str) -> Path:
        return self._paths(name)["memory"] / "memory.max_usage_in_bytes"

    def memory_peak(self, name: str) -> int:
        return int(read(self.memory_peak_path(name)))

    def pids(self, name: str) -> list[int]:
        return procs(self._paths(name)["freezer"])

    def kill(self, name: str) -> None:
        """Freeze so nothing can fork while we kill, SIGKILL every process, thaw."""
        freezer = self._paths(name)["freezer"]
        write(freezer / "freezer.state", "FROZEN")
        deadline = time.monotonic() + FREEZE_WAIT
        while read(freezer / "freezer.state").strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.001)
        for pid in procs(freezer):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        write(freezer / "freezer.state", "THAWED")

    def names(self) -> list[str]:
        """Instance cgroups present in any hierarchy's subtree."""
        found: set[str] = set()
        for base in self.bases.values():
            if base.is_dir():
                found.update(p.name for p in base.iterdir() if p.is_dir())
        return sorted(found)

    def remove(self, name: str) -> bool:
        return all([remove_dir(path) for path in self._paths(name).values()])
