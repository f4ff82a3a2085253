"""cgroups: one cgroup per instance, in an `fgd` subtree beneath the daemon's own.

Two backends with one interface: `V2` (the unified hierarchy; primary) and
`V1` (legacy or hybrid hosts: memory, pids, cpu and freezer hierarchies).
`detect()` reads /proc/self/cgroup and /proc/self/mountinfo to pick one and
to find the daemon's own cgroup in each hierarchy; nothing is ever created
outside that cgroup. `memory_limit()` says how much memory the daemon's own
cgroup and its ancestors let it use; `node_pids_max()` the default cap on
the tasks of all instances together.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from sandbox.cgroups._base import UNLIMITED, CgroupError, Limits, parse_key_value
from sandbox.cgroups.v1 import V1
from sandbox.cgroups.v2 import V2

__all__ = [
    "V1",
    "V2",
    "CgroupError",
    "Limits",
    "detect",
    "favors_dynamic_moves",
    "memory_limit",
    "node_pids_max",
    "parse_key_value",
    "parse_mountinfo",
    "parse_proc_cgroup",
]

V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")


class CgroupMount(msgspec.Struct, frozen=True):
    path: str
    version: int
    controllers: frozenset[str]
    # The hierarchy's super options (a v1 hierarchy's controllers among them).
    options: frozenset[str] = frozenset()


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each controller (and "" for the unified hierarchy) to the process's cgroup path."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers:
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller.removeprefix("name=")] = path
    return paths


def parse_mountinfo(text: str) -> list[CgroupMount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if separator < 5 or len(fields) < separator + 4:
            continue  # not a mountinfo line
        fstype, options = fields[separator + 1], frozenset(fields[separator + 3].split(","))
        if fstype == "cgroup2":
            mounts.append(CgroupMount(fields[4], 2, frozenset(), options))
        elif fstype == "cgroup":
            mounts.append(CgroupMount(fields[4], 1, options, options))
    return mounts


def favors_dynamic_moves(mountinfo: str | None = None) -> bool:
    """Whether the host's cgroups are mounted with `favordynmods` (set as a v2 mount option, or
    for v1 and v2 by the boot option `cgroup_favordynmods=true`). Without it, moving a process
    into a cgroup after a quiet spell waits for an RCU grace period (docs/performance.md)."""
    mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    return any("favordynmods" in mount.options for mount in parse_mountinfo(mountinfo))


def detect(
    proc_cgroup: str | None = None,
    mountinfo: str | None = None,
    root_override: str | None = None,
    owner: int | None = None,
) -> V1 | V2 | None:
    """The backend for this host, or None if it has no usable cgroup hierarchy."""
    proc_cgroup = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    own = parse_proc_cgroup(proc_cgroup)
    mounts = parse_mountinfo(mountinfo)
    if root_override is not None:
        mounts = [m for m in mounts if m.path.startswith(root_override)]
    unified = [m for m in mounts if m.version == 2]
    v1 = {c: m for m in mounts if m.version == 1 for c in m.controllers if c in V1_CONTROLLERS}
    if unified and "" in own:
        root = Path(unified[0].path)
        controllers_file = root / own[""].lstrip("/") / "cgroup.controllers"
        # On a hybrid host the unified hierarchy has no controllers: use v1 there.
        if controllers_file.exists() and {"memory", "pids"} <= set(controllers_file.read_text().split()):
            return V2(root, own[""], owner)
    if all(c in v1 for c in V1_CONTROLLERS):
        return V1({c: (Path(v1[c].path), own.get(c, "/")) for c in V1_CONTROLLERS}, owner)
    return None


def _limit_along(mount: Path, own: str, filename: str) -> list[int]:
    """The limits in `filename` on the cgroup `own` and each ancestor up to the mount."""
    found = []
    path = mount / own.strip("/")
    while True:
        try:
            text = (path / filename).read_text().strip()
        except OSError:
            text = ""
        if text.isdigit() and int(text) < UNLIMITED:
            found.append(int(text))
        if path == mount or mount not in path.parents:
            return found
        path = path.parent


def memory_limit(proc_cgroup: str | None = None, mountinfo: str | None = None) -> int | None:
    """Bytes the daemon may really use: the smallest memory limit on its cgroup or an ancestor.

    v2 `memory.max`, v1 `memory.limit_in_bytes`, whichever hierarchies hold the
    memory controller (an appliance sets `MemoryMax=` on the unit). None when
    nothing above the daemon limits it.
    """
    proc_cgroup = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    own = parse_proc_cgroup(proc_cgroup)
    limits: list[int] = []
    for mount in parse_mountinfo(mountinfo):
        if mount.version == 2 and "" in own:
            limits += _limit_along(Path(mount.path), own[""], "memory.max")
        elif mount.version == 1 and "memory" in mount.controllers and "memory" in own:
            limits += _limit_along(Path(mount.path), own["memory"], "memory.limit_in_bytes")
    return min(limits) if limits else None


def node_pids_max(configured: int | None = None, pid_max_file: str = "/proc/sys/kernel/pid_max") -> int:
    """The cap on tasks of all instances together: as configured, else well below the host's pid_max."""
    if configured is not None:
        return configured
    try:
        pid_max = int(Path(pid_max_file).read_text())
    except (OSError, ValueError):
        pid_max = 32768
    return max(1, min(pid_max // 2, 32768))
