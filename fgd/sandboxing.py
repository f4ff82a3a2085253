"""The daemon's side of the sandbox: what this host offers, and the policies it sends.

At start the host is probed once: root, namespaces, a cgroup hierarchy with
the controllers we need, seccomp, the unprivileged function user. Anything
missing stops `fgd serve` unless `sandbox.allow_degraded` is set; then each
missing protection is switched off by name and reported at start, in
/healthz and by `fgd doctor`.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import sys
import time
from pathlib import Path

import msgspec
import psutil

from fgd.config import SandboxConfig
from fgd.model import FunctionRecord, cpu_millicores
from sandbox import namespaces, seccomp
from sandbox.cgroups import V1, V2, CgroupError, Limits, detect
from sandbox.credentials import UserUnavailable, ensure_user
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


class Check(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str


class HostFacts(msgspec.Struct):
    checks: list[Check]
    cgroups: V1 | V2 | None = None
    uid: int = 0
    gid: int = 0

    def missing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def probe(config: SandboxConfig, *, check_only: bool = False) -> HostFacts:
    """What this host offers. With `check_only` nothing is created or moved (for `fgd doctor`)."""
    checks: list[Check] = []
    root = os.geteuid() == 0
    checks.append(Check("root", root, "running as root" if root else "not root: cannot build sandboxes"))
    kinds = namespaces.available()
    for kind in ("mnt", "pid", "net", "ipc", "uts", "cgroup"):
        checks.append(Check(f"namespace {kind}", kinds[kind], "available" if kinds[kind] else "not in this kernel"))
    checks.append(
        Check("user namespaces", kinds["user"], "available (not used as root)" if kinds["user"] else "unavailable")
    )
    cgroups = None
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
                cgroups.setup()
            checks.append(Check("cgroups", root, cgroups.describe() if root else "cannot write cgroups without root"))
        except CgroupError as exc:
            checks.append(Check("cgroups", False, str(exc)))
            cgroups = None
    checks.append(Check("seccomp", seccomp.available(), "filters supported" if seccomp.available() else "unsupported"))
    uid = gid = 0
    try:
        if not root:
            checks.append(Check("function user", False, f"{config.user}: cannot switch users without root"))
        elif check_only:
            checks.append(user_check(config.user))
        else:
            uid, gid = ensure_user(config.user)
            checks.append(Check("function user", True, f"{config.user} (uid {uid}, gid {gid})"))
    except UserUnavailable as exc:
        checks.append(Check("function user", False, str(exc)))
    return HostFacts(checks, cgroups if root else None, uid, gid)


def user_check(name: str) -> Check:
    try:
        entry = pwd.getpwnam(name)
        return Check("function user", entry.pw_uid != 0, f"{name} (uid {entry.pw_uid}, gid {entry.pw_gid})")
    except KeyError:
        creatable = shutil.which("useradd") is not None
        detail = f"{name} does not exist; fgd serve will create it" if creatable else f"{name} missing, no useradd"
        return Check("function user", creatable, detail)


def protections_for(facts: HostFacts) -> Protections:
    ok = {c.name: c.ok for c in facts.checks}
    root = ok["root"]
    spaces = root and all(ok[f"namespace {k}"] for k in ("mnt", "pid", "net", "ipc", "uts", "cgroup"))
    return Protections(
        namespaces=spaces,
        mounts=spaces,
        credentials=root and ok["function user"],
        seccomp=ok["seccomp"],
    )


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


class Sandbox:
    """Policies and cgroups for instances, as this host allows."""

    def __init__(self, config: SandboxConfig, facts: HostFacts, state_dir: Path) -> None:
        self.config = config
        self.facts = facts
        self.protections = protections_for(facts)
        self.cgroups = facts.cgroups
        mounts, links = host_layout()
        etc = {
            "passwd": (
                f"root:x:0:0:root:/root:/usr/sbin/nologin\nfunction:x:{facts.uid}:{facts.gid}::/tmp:/usr/sbin/nologin\n"
            ),
            "group": f"root:x:0:\nfunction:x:{facts.gid}:\n",
            "hostname": "localhost\n",
            "hosts": "127.0.0.1 localhost\n::1 localhost\n",
        }
        new_root = state_dir / "sandbox-root"
        new_root.mkdir(mode=0o700, exist_ok=True)
        self.state_dir = state_dir
        self.contain_policy = ContainPolicy(
            str(new_root), str(state_dir), mounts, links, etc, "localhost", self.protections
        )
        self.cpu_cap = (psutil.cpu_count() or 1) * 1000

    def remove_stale_cgroups(self) -> int:
        """Kill and remove instance cgroups left by a daemon that is gone (crash, SIGKILL).

        Names start with the owning daemon's pid; another live fgd on this host keeps its own.
        """
        if self.cgroups is None:
            return 0
        removed = 0
        for name in self.cgroups.names():
            owner, _, _ = name.partition("-")
            if owner.isdigit() and int(owner) != os.getpid() and psutil.pid_exists(int(owner)):
                continue
            try:
                self.cgroups.kill(name)
                for _ in range(100):
                    if self.cgroups.remove(name):
                        removed += 1
                        break
                    time.sleep(0.01)
            except CgroupError as exc:
                log.warning("cannot remove stale cgroup %s: %s", name, exc)
        return removed

    @property
    def degraded(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.facts.missing() if c.name != "user namespaces"]

    def enter_policy(
        self,
        record: FunctionRecord,
        code_tree: Path,
        dependency_trees: list[tuple[str, Path]],
        profile: str = "event",
    ) -> EnterPolicy:
        binds = [Mount(str(code_tree.relative_to(self.state_dir)), CODE_DIR)]
        binds += [Mount(str(tree.relative_to(self.state_dir)), inside) for inside, tree in dependency_trees]
        return EnterPolicy(
            binds=binds,
            workdir=WORKDIR,
            tmp_size_mb=record.settings.ephemeral_storage,
            uid=self.facts.uid,
            gid=self.facts.gid,
            seccomp_profile=profile,
            protections=self.protections,
        )

    def limits(self, record: FunctionRecord | None) -> Limits:
        if record is None:
            return Limits(GENERIC_MEMORY, self.config.pids_max, None)
        memory = record.settings.memory_size
        return Limits(memory * 1024 * 1024, self.config.pids_max, min(cpu_millicores(memory), self.cpu_cap))
