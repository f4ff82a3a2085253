"""The instance's filesystem view: a tmpfs root holding only what it is given.

`build_root` runs once per sandbox, before it knows its workload: it makes the
inherited mounts private, builds a new root on tmpfs with read-only binds of
the host's runtime directories, a minimal /dev, /proc and /tmp, then
`pivot_root`s into it, detaches the old root and makes the root read-only.
Before the old root goes it binds the host directory that workload binds
will come from at a hidden place in the new root; `enter_root` binds the
workload's code and dependencies from there, then unmounts and removes it,
and sizes /tmp. Doing the pivot ahead of time keeps it (and the detach of
the host's whole mount tree) off the cold-start path. Issue 15: `stage_etc`,
run by a pooled worker while it waits, puts its own /etc user tables in place
ahead too; `enter_root` then only rewrites them through root's descriptors.
"""

from __future__ import annotations

import os

from sandbox._libc import mount, pivot_root, umount2
from sandbox.policy import Mount

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

# The new root is assembled on a tmpfs mounted (in the sandbox's private mount
# namespace only) over an empty host directory the caller names; the host sees
# nothing of it, and no host path is hidden from the binds.
OLD_ROOT = ".old-root"
DEPENDENCY_MOUNT = "/opt/function/dependency"
# Inside the dependency tmpfs, which stays writable until the workload is bound.
SOURCES = DEPENDENCY_MOUNT + "/.sources"
DEFAULT_TMP_MB = 512
# /etc files a workload may be given its own copy of (its uid's user tables, its network's
# resolv.conf): staged when the pooled worker is made (`stage_etc`), so specialisation only
# rewrites their content through a descriptor instead of binding a new file over each.
PER_INSTANCE_ETC = ("passwd", "group", "resolv.conf")
# name -> read-write descriptor of the staged file bound read-only at /etc/<name> (this process's).
_staged_etc: dict[str, int] = {}

DEVICES = ["null", "zero", "full", "random", "urandom"]
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


def _mkdirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def bind_readonly(source: str, target: str) -> None:
    """Bind `source` at `target` (created as needed), read-only, nosuid, nodev."""
    if os.path.isdir(source):
        _mkdirs(target)
    else:
        _mkdirs(os.path.dirname(target))
        if not os.path.exists(target):
            open(target, "w").close()
    mount(source, target, None, MS_BIND | MS_REC)
    # A bind mount takes its flags only on a remount.
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(
    new_root: str,
    root_mounts: list[Mount],
    symlinks: list[tuple[str, str]],
    etc_files: dict[str, str],
    sources: str,
    shared_trees: list[Mount] | None = None,
) -> None:
    # Nothing we mount from here on may propagate back to the host.
    mount(None, "/", None, MS_REC | MS_PRIVATE)

    def inside(path: str) -> str:
        return new_root + "/" + path.lstrip("/")

    mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    for item in root_mounts:
        if os.path.exists(item.source):
            bind_readonly(item.source, inside(item.target))
    for path, target in symlinks:
        if not os.path.lexists(inside(path)):
            _mkdirs(os.path.dirname(inside(path)))
            os.symlink(target, inside(path))
    _mkdirs(inside("/etc"))
    for name, content in etc_files.items():
        with open(inside(f"/etc/{name}"), "w") as handle:
            handle.write(content)
    _build_dev(inside("/dev"))
    _mkdirs(inside("/proc"))
    # We are PID 1 of the new pid namespace: this /proc shows only the sandbox.
    mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mkdirs(inside("/tmp"))
    mount("tmpfs", inside("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, f"size={DEFAULT_TMP_MB}m,mode=1777")
    _mkdirs(inside("/opt/function/code"))
    # Its own tmpfs, so per-dependency mount points can be made after the root is read-only.
    _mkdirs(inside(DEPENDENCY_MOUNT))
    mount("tmpfs", inside(DEPENDENCY_MOUNT), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    _mkdirs(inside(SOURCES), 0o700)
    mount(sources, inside(SOURCES), None, MS_BIND | MS_REC)
    # Trees shared by every instance: opened now, shown at their targets after the pivot, when
    # mountinfo can no longer name their host paths, and before the host's tree (which they are
    # part of) is detached: one detach, whose RCU grace period is paid once (issue 15: each
    # tree was bound at a stage of its own, unmounted after, a grace period each).
    shared = []
    for item in shared_trees or []:
        if os.path.isdir(item.source):
            shared.append((os.open(item.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), item.target))
    _mkdirs(inside(OLD_ROOT))
    os.chdir(new_root)
    pivot_root(".", OLD_ROOT)
    os.chdir("/")
    try:
        for fd, target in shared:
            # /proc is already ours: the descriptor's path walk stays in the old root's tree.
            mount_tree_readonly(f"/proc/self/fd/{fd}", target)
    finally:
        for fd, _ in shared:
            os.close(fd)
    umount2(OLD_ROOT, MNT_DETACH)
    os.rmdir(OLD_ROOT)
    # Only /tmp and /dev/shm stay writable.
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _build_dev(dev: str) -> None:
    _mkdirs(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEVICES:
        target = f"{dev}/{name}"
        open(target, "w").close()
        mount(f"/dev/{name}", target, None, MS_BIND)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{dev}/{name}")
    # POSIX semaphores (multiprocessing) live in /dev/shm.
    _mkdirs(f"{dev}/shm")
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64m,mode=1777")


def mount_tree_readonly(source: str, target: str) -> None:
    """Show the directory `source` at `target`, read-only, without naming `source` in mountinfo.

    A bind mount shows its source's path (state dir, code sha256) in
    /proc/self/mountinfo. A read-only overlay whose top layer is given as "."
    (after a chdir into it) and whose bottom layer is the empty mount point
    itself shows only "lowerdir=.:<target>". Falls back to a bind where
    overlayfs is missing.
    """
    _mkdirs(target)
    if not any(c in target for c in ":,\\"):
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(source)
            mount("overlay", target, "overlay", MS_RDONLY | MS_NOSUID | MS_NODEV, f"lowerdir=.:{target}")
            return
        except OSError:
            pass
        finally:
            os.fchdir(here)
            os.close(here)
    bind_readonly(source, target)


def stage_etc(etc_files: dict[str, str]) -> None:
    """In the pooled worker, before it knows its workload: put a file of its own, with the generic
    content, over each of `/etc`'s PER_INSTANCE_ETC files, and keep a read-write descriptor to it
    (root's, closed before anything else runs: `enter_root` writes and closes it, `drop` closes
    what is left: `forget_staged_etc`).

    The files are made on /tmp, bound read-only over the generic ones, and unlinked (the binds
    keep them; /tmp stays writable, so nothing is left to see): as `enter_root` did at each
    specialisation before (issue 15), minus the content.
    """
    for name in PER_INSTANCE_ETC:
        if name not in etc_files or name in _staged_etc:
            continue
        staging = f"/tmp/.etc-{name}"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, etc_files[name].encode())
            os.fchmod(fd, 0o644)
            bind_readonly(staging, f"/etc/{name}")
        except OSError:
            os.close(fd)
            raise
        finally:
            os.unlink(staging)
        _staged_etc[name] = fd


def forget_staged_etc(reused: set[int] | frozenset[int] = frozenset()) -> None:
    """Close the staged files' descriptors this process still holds (before privileges drop).

    Numbers in `reused` are only forgotten: the caller has put something else there since (a
    Node.js launch dup2s its sockets onto fixed numbers).
    """
    while _staged_etc:
        fd = _staged_etc.popitem()[1]
        if fd not in reused:
            os.close(fd)


def _write_staged(fd: int, content: str) -> None:
    data = content.encode()
    os.ftruncate(fd, 0)
    if os.pwrite(fd, data, 0) != len(data):
        raise OSError("short write to a staged /etc file")


def enter_root(binds: list[Mount], tmp_size_mb: int, workdir: str, etc_files: dict[str, str] | None = None) -> None:
    """Mount the workload (sources relative to build_root's `sources`), drop the rest, size /tmp."""
    for item in binds:
        mount_tree_readonly(f"{SOURCES}/{item.source.lstrip('/')}", item.target)
    # Files for /etc (the instance's own user): those staged with the pooled worker get their
    # content through the descriptor kept then; any other is written on /tmp, bound over the
    # generic one and unlinked (the bind keeps it), as `stage_etc` does.
    for name, content in (etc_files or {}).items():
        fd = _staged_etc.pop(name, None)
        if fd is not None:
            try:
                _write_staged(fd, content)
            finally:
                os.close(fd)
            continue
        staging = f"/tmp/.etc-{name}"
        with open(staging, "w") as handle:
            handle.write(content)
        os.chmod(staging, 0o644)
        bind_readonly(staging, f"/etc/{name}")
        os.unlink(staging)
    forget_staged_etc()
    umount2(SOURCES, MNT_DETACH)
    os.rmdir(SOURCES)
    mount(None, DEPENDENCY_MOUNT, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if tmp_size_mb != DEFAULT_TMP_MB:
        mount(None, "/tmp", None, MS_REMOUNT | MS_NOSUID | MS_NODEV, f"size={tmp_size_mb}m,mode=1777")
    os.chdir(workdir)
