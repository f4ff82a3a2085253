"""The daemon's side of the sandbox: what this host offers, and the policies it sends.

At start the host is probed once: root, namespaces, a cgroup hierarchy with
the controllers we need, seccomp, a free range of function uids. Each
protection (namespaces, mounts, credentials, capabilities, rlimits, fds,
seccomp, cgroups) is on unless the host lacks what it needs or
`[sandbox] disable` names it; one that is off never takes the others with it.
Anything off stops `fgd serve` unless `sandbox.allow_degraded` is set; then
each one is named at start, in /healthz and by `fgd doctor`.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
import time
from pathlib import Path

import msgspec
import psutil

from fgd.config import SandboxConfig
from fgd.errors import Unavailable
from fgd.model import FunctionRecord, cpu_millicores
from sandbox import namespaces, reaper, seccomp
from sandbox.cgroups import V1, V2, CgroupError, Limits, detect, node_pids_max
from sandbox.cgroups._base import pid_namespace
from sandbox.policy import ContainPolicy, EnterPolicy, Mount, Protections

log = logging.getLogger("fgd.sandbox")

CODE_DIR = "/opt/function/code"
DEPENDENCY_DIR = "/opt/function/dependency"
WORKDIR = "/opt/function"
# Memory limit of a pooled instance before it is given a function.
GENERIC_MEMORY = 128 * 1024 * 1024
# Host directories a Python runtime needs, bound read-only when they exist.
HOST_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
HOST_ETC = ["ld.so.cache", "localtime", "ssl", "alternatives", "ca-certificates", "nsswitch.conf", "mime.types"]
NAMESPACE_KINDS = ("mnt", "pid", "net", "ipc", "uts", "cgroup")
# How long the start waits for stale instance cgroups to empty.
STALE_WAIT = 2.0


class Check(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str


class HostFacts(msgspec.Struct):
    checks: list[Check]
    cgroups: V1 | V2 | None = None

    def missing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def probe(config: SandboxConfig, *, check_only: bool = False) -> HostFacts:
    """What this host offers. With `check_only` nothing is created or moved (for `fgd doctor`)."""
    checks: list[Check] = []
    root = os.geteuid() == 0
    checks.append(Check("root", root, "running as root" if root else "not root: cannot build sandboxes"))
    kinds = namespaces.available()
    for kind in NAMESPACE_KINDS:
        checks.append(Check(f"namespace {kind}", kinds[kind], "available" if kinds[kind] else "not in this kernel"))
    checks.append(
        Check("user namespaces", kinds["user"], "available (not used as root)" if kinds["user"] else "unavailable")
    )
    cgroups = None
    if "cgroups" not in config.disable:
        try:
            cgroups = detect(root_override=config.cgroup_root)
        except OSError as exc:
            checks.append(Check("cgroups", False, f"cannot read cgroup information: {exc}"))
        if cgroups is None:
            checks.append(
                Check("cgroups", False, "no cgroup v2 hierarchy with memory+pids, nor v1 memory/pids/cpu/freezer")
            )
        else:
            try:
                if root and not check_only:
                    cgroups.setup(node_pids_max(config.node_pids_max))
                detail = cgroups.describe() + f"; all instances together: {node_pids_max(config.node_pids_max)} tasks"
                if check_only:
                    # `fgd doctor` is not the daemon: name the subtree the daemon will own.
                    detail = detail.replace(f"fgd-{os.getpid()}-{pid_namespace()}", "fgd-<daemon pid>-<pid namespace>")
                checks.append(Check("cgroups", root, detail if root else "cannot write cgroups without root"))
            except CgroupError as exc:
                checks.append(Check("cgroups", False, str(exc)))
                cgroups = None
    checks.append(Check("seccomp", seccomp.available(), "filters supported" if seccomp.available() else "unsupported"))
    checks.append(uid_check(config, root))
    # Issue 15: the instances' PID 1 (not a protection: without it, each instance costs more memory).
    native, where = reaper.check_native()
    checks.append(Check("pid 1", native, f"native reaper {where}" if native else f"no native reaper: {where}"))
    if not native and not check_only:
        log.warning("instances' PID 1 is the Python reaper: no native reaper: %s", where)
    return HostFacts(checks, cgroups if root else None)


def uid_check(config: SandboxConfig, root: bool) -> Check:
    """The function uid range: unprivileged, and no host user in it (it would share files with them)."""
    first, last = config.uid_base, config.uid_base + config.uid_count - 1
    described = f"{first}-{last}"
    if not root:
        return Check("function uids", False, f"{described}: cannot switch users without root")
    if config.uid_base <= 0 or config.uid_count < 1 or last > 2**32 - 2:
        return Check("function uids", False, f"{described}: not a range of unprivileged uids")
    taken = [e.pw_name for e in pwd.getpwall() if first <= e.pw_uid <= last]
    if taken:
        return Check("function uids", False, f"{described} holds host users ({', '.join(taken[:3])})")
    return Check("function uids", True, f"one per instance from {described}")


def protections_for(facts: HostFacts, disable: list[str] | tuple[str, ...] = ()) -> tuple[Protections, list[str]]:
    """What is applied, and one line per protection that is off, saying why."""
    ok = {c.name: c for c in facts.checks}
    reasons: dict[str, str] = {}

    def lacks(protection: str, check: str) -> None:
        if not ok[check].ok and protection not in reasons:
            reasons[protection] = ok[check].detail

    for name in disable:
        reasons[name] = "switched off by [sandbox] disable"
    for protection in ("namespaces", "mounts", "credentials", "capabilities", "cgroups"):
        lacks(protection, "root")
    for kind in NAMESPACE_KINDS:
        lacks("namespaces", f"namespace {kind}")
    if "namespaces" in reasons and "mounts" not in reasons:
        reasons["mounts"] = "needs namespaces"
    if "cgroups" in ok:
        lacks("cgroups", "cgroups")
    lacks("seccomp", "seccomp")
    lacks("credentials", "function uids")
    fields = Protections.__struct_fields__
    protections = Protections(**{name: name not in reasons for name in fields})
    return protections, [f"{name}: {reasons[name]}" for name in fields if name in reasons]


def user_tables(uid: int, gid: int) -> dict[str, str]:
    """/etc/passwd and /etc/group inside the sandbox: root and this instance's function user."""
    return {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nfunction:x:{uid}:{gid}::/tmp:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nfunction:x:{gid}:\n",
    }


class UidsExhausted(Unavailable):
    """Every uid of the configured range belongs to a live instance (a 503: try again later)."""


class UidPool:
    """Distinct uids for live instances; a uid is reused only after its instance is gone.

    Handed out round-robin, so a uid freed a moment ago is the last to come back.
    """

    def __init__(self, base: int, count: int) -> None:
        self.base = base
        self.count = count
        self._next = 0
        self.owners: dict[str, int] = {}
        self._taken: set[int] = set()

    def take(self, owner: str) -> int:
        if owner in self.owners:
            return self.owners[owner]
        for step in range(self.count):
            uid = self.base + (self._next + step) % self.count
            if uid not in self._taken:
                self._next = (self._next + step + 1) % self.count
                self._taken.add(uid)
                self.owners[owner] = uid
                return uid
        raise UidsExhausted(f"all {self.count} function uids are in use; raise [sandbox] uid_count")

    def give_back(self, owner: str) -> None:
        uid = self.owners.pop(owner, None)
        if uid is not None:
            self._taken.discard(uid)


def host_layout() -> tuple[list[Mount], list[tuple[str, str]]]:
    mounts: list[Mount] = []
    links: list[tuple[str, str]] = []
    for path in HOST_DIRS:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            mounts.append(Mount(path, path))
    # The interpreter's own library, wherever it is installed.
    prefix = os.path.realpath(sys.base_prefix)
    if not any(prefix == m.source or prefix.startswith(m.source + "/") for m in mounts):
        mounts.append(Mount(prefix, prefix))
    for name in HOST_ETC:
        if os.path.exists(f"/etc/{name}"):
            mounts.append(Mount(f"/etc/{name}", f"/etc/{name}"))
    return mounts, links


class HostSandbox:
    """Policies and cgroups for instances, as this host allows (the daemon's side of the `sandbox` package)."""

    def __init__(
        self, config: SandboxConfig, facts: HostFacts, state_dir: Path, shared_mounts: list[Mount] | None = None
    ) -> None:
        self.config = config
        self.facts = facts
        self.protections, self.degraded = protections_for(facts, config.disable)
        self.cgroups = facts.cgroups if self.protections.cgroups else None
        self.uids = UidPool(config.uid_base, config.uid_count)
        mounts, links = host_layout()
        # The function user is added per instance (its own uid), over these.
        etc = {
            "passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n",
            "group": "root:x:0:\n",
            "hostname": "localhost\n",
            "hosts": "127.0.0.1 localhost\n::1 localhost\n",
            # Issue 14: empty (no name server) unless the function's mode is outbound, when the
            # instance's own is bound over it (fgd.network.Network.enter_policy).
            "resolv.conf": "",
        }
        new_root = state_dir / "sandbox-root"
        new_root.mkdir(mode=0o700, exist_ok=True)
        self.state_dir = state_dir
        self.contain_policy = ContainPolicy(
            str(new_root),
            str(state_dir),
            mounts,
            links,
            etc,
            "localhost",
            self.protections,
            # Read-only trees every instance sees (the bundled libraries, issue 12): mounted once
            # per sandbox when it is built, from the host, so all instances share one copy.
            shared_trees=shared_mounts or [],
        )
        self.cpu_cap = (psutil.cpu_count() or 1) * 1000

    def remove_stale_cgroups(self) -> int:
        """Kill and remove instance cgroups left by a daemon that is gone (crash, SIGKILL).

        Names start with the owning daemon's pid; another live fgd on this host keeps its own.
        Root-level `fgd-<pid>` subtrees of dead daemons go too. Every hierarchy's directory is
        removed on its own, and nothing blocks for long: all are killed first, then polled.
        """
        if self.cgroups is None:
            return 0
        cgroups = self.cgroups

        def alive(pid: int) -> bool:
            return pid != os.getpid() and psutil.pid_exists(pid)

        stale = []
        for name in cgroups.names():
            owner, _, _ = name.partition("-")
            if owner.isdigit() and alive(int(owner)):
                continue
            try:
                cgroups.kill(name)
            except CgroupError as exc:
                log.debug("stale cgroup %s: %s", name, exc)
            stale.append(name)
        abandoned = cgroups.abandoned(alive)
        removed = 0
        deadline = time.monotonic() + STALE_WAIT
        while stale or abandoned:
            for name in list(stale):
                try:
                    if cgroups.remove(name):
                        stale.remove(name)
                        removed += 1
                except CgroupError as exc:
                    log.warning("cannot remove stale cgroup %s: %s", name, exc)
                    stale.remove(name)
            for subtree in list(abandoned):
                try:
                    if cgroups.remove_abandoned(subtree):
                        abandoned.remove(subtree)
                        removed += 1
                except (CgroupError, OSError) as exc:
                    log.warning("cannot remove the subtree %s of a daemon that is gone: %s", subtree, exc)
                    abandoned.remove(subtree)
            if time.monotonic() > deadline:
                log.warning("stale cgroups still busy after %.0f s: %s", STALE_WAIT, stale + abandoned)
                break
            if stale or abandoned:
                time.sleep(0.01)
        return removed

    def close(self) -> None:
        """At exit: remove this daemon's (empty) cgroup subtree."""
        if self.cgroups is not None:
            self.cgroups.teardown()

    def enter_policy(
        self,
        record: FunctionRecord,
        code_tree: Path,
        dependency_trees: list[tuple[str, Path]],
        owner: str = "",
        profile: str = "event",
    ) -> EnterPolicy:
        """The specific steps for one instance (`owner`, its id), which gets its own uid and gid."""
        binds = [Mount(str(code_tree.relative_to(self.state_dir)), CODE_DIR)]
        binds += [Mount(str(tree.relative_to(self.state_dir)), inside) for inside, tree in dependency_trees]
        uid = self.uids.take(owner) if self.protections.credentials else 0
        return EnterPolicy(
            binds=binds,
            workdir=WORKDIR,
            tmp_size_mb=record.settings.ephemeral_storage,
            uid=uid,
            gid=uid,
            seccomp_profile=profile,
            protections=self.protections,
            etc_files=user_tables(uid, uid),
        )

    def release_uid(self, owner: str) -> None:
        """The instance `owner` and all its processes are gone: its uid may serve another."""
        self.uids.give_back(owner)

    def limits(self, record: FunctionRecord | None) -> Limits:
        return self.limits_for(None if record is None else record.settings.memory_size)

    def limits_for(self, memory_size: int | None) -> Limits:
        """A function of `memory_size` MB's cgroup limits; None: a pooled instance's, before any function."""
        if memory_size is None:
            return Limits(GENERIC_MEMORY, self.config.pids_max, None)
        return Limits(memory_size * 1024 * 1024, self.config.pids_max, min(cpu_millicores(memory_size), self.cpu_cap))
