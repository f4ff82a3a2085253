"""What a sandbox is told to do. Pure data; nothing here touches the kernel."""

from __future__ import annotations

import msgspec


class Mount(msgspec.Struct, frozen=True):
    """A host path bound read-only (nosuid, nodev) at `target` inside the sandbox."""

    source: str
    target: str


class Protections(msgspec.Struct, frozen=True):
    """Which facilities are applied; all on except on a host that lacks them (degraded mode).

    Each is applied on its own: one that is off never takes another with it
    (mounts need namespaces, which is the one dependency there is).
    """

    namespaces: bool = True
    mounts: bool = True
    # The instance's own unprivileged uid and gid, no supplementary groups.
    credentials: bool = True
    # Every capability set emptied, including the bounding set.
    capabilities: bool = True
    rlimits: bool = True
    # Every inherited descriptor closed but the protocol socket and stdio.
    fds: bool = True
    # Also sets no_new_privs, which loading a filter without CAP_SYS_ADMIN needs.
    seccomp: bool = True
    cgroups: bool = True

    def off(self) -> list[str]:
        return [name for name in self.__struct_fields__ if not getattr(self, name)]


class ContainPolicy(msgspec.Struct, frozen=True):
    """The generic part, applied before the sandbox knows what it will run."""

    # An empty host directory the new root is mounted over (privately).
    new_root: str
    # The host directory workload binds (EnterPolicy.binds sources) are relative to.
    sources: str
    root_mounts: list[Mount]
    # Paths that are symlinks on the host (usr-merged /bin, /lib ...): (path, link target).
    symlinks: list[tuple[str, str]]
    # Files written into the sandbox's /etc: name -> content.
    etc_files: dict[str, str]
    hostname: str = "localhost"
    protections: Protections = Protections()
    # Host directories every instance sees read-only (the bundled libraries), shown inside
    # without their host path (mountinfo names only the target).
    shared_trees: list[Mount] = []


class EnterPolicy(msgspec.Struct, frozen=True):
    """The specific part, applied when the sandbox is given its workload."""

    # Bound read-only: source relative to ContainPolicy.sources, target inside; e.g. code, dependencies.
    binds: list[Mount]
    workdir: str
    tmp_size_mb: int
    uid: int
    gid: int
    nofile: int = 2048
    seccomp_profile: str = "event"
    protections: Protections = Protections()
    # Files put over the sandbox's /etc (passwd and group naming this instance's uid).
    etc_files: dict[str, str] = {}
    # Issue 14: keep the interface the daemon gave the pooled instance (network mode
    # `outbound`). False (mode `none`): every interface but loopback is removed first.
    interfaces: bool = False
