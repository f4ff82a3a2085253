"""seccomp: an allow-list built once (in the zygote), exported as BPF, loaded last.

The base is Docker's default profile: the system calls a normal program needs,
and not the ones that reach into the kernel's administration (mount, modules,
keyrings, bpf, ptrace, namespaces, clocks, reboot). Anything not allowed fails
with EPERM rather than killing the process, so a library that probes for a
feature falls back instead of crashing. On top of that:

- `clone` may not create namespaces; `clone3` fails with ENOSYS, so glibc and
  Python fall back to `clone` (EPERM would make thread creation fail);
- io_uring fails with ENOSYS (never kills);
- `socket` opens only what functions need: AF_UNIX, AF_INET and AF_INET6
  stream, datagram and seqpacket sockets, and AF_NETLINK with NETLINK_ROUTE
  (getaddrinfo, interface lists). Packet and raw sockets, AF_VSOCK (which a
  network namespace does not confine: it reaches the VM's host), other
  netlink families (uevents show the host's device events) and every other
  family are refused. Family and protocol are compared as the 32-bit values
  the kernel reads, so high bits cannot carry a refused family past the rule;
- `pidfd_getfd` (taking another process's descriptors) is refused;
- `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)` (typing into a terminal) are denied;
- the `event` profile also denies `listen`: event functions may not accept
  connections (FunctionGraph's rule). The `http` profile allows it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import tempfile

import pyseccomp as seccomp

from sandbox._libc import prctl

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

ALLOWED = [
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
]

# socket(): (family, type, protocol or None for any). The kernel reads family, type and
# protocol as 32-bit ints, so only the low 32 bits are compared (AF_PACKET | 1 << 32 is AF_PACKET).
INT32 = 0xFFFFFFFF
NETLINK_ROUTE = 0
SOCKETS = [
    (family, kind, None)
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET)
] + [(socket.AF_NETLINK, kind, NETLINK_ROUTE) for kind in (socket.SOCK_RAW, socket.SOCK_DGRAM)]

# Allowed only in the `http` profile.
LISTEN = ["listen"]
ENOSYS_CALLS = ["clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"]
PROFILES = ("event", "http")


def _rule(filt: seccomp.SyscallFilter, action: object, name: str, *args: seccomp.Arg) -> None:
    # A name that is not a system call on this architecture (socketcall, *_time64 ...) is skipped.
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        filt.add_rule(action, name, *args)


def _allow(filt: seccomp.SyscallFilter, name: str, *args: seccomp.Arg) -> None:
    _rule(filt, seccomp.ALLOW, name, *args)


def build(profile: str) -> bytes:
    """The BPF program for `profile`, ready for `load`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown seccomp profile {profile!r}")
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    # A binary tree instead of a linear chain: every system call of the function pays for the lookup.
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        filt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    for name in ALLOWED:
        _allow(filt, name)
    if profile == "http":
        for name in LISTEN:
            _allow(filt, name)
    for name in ENOSYS_CALLS:
        _rule(filt, seccomp.ERRNO(errno.ENOSYS), name)
    _allow(filt, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, NAMESPACE_FLAGS, 0))
    for family, kind, protocol in SOCKETS:
        args = [seccomp.Arg(0, seccomp.MASKED_EQ, INT32, family), seccomp.Arg(1, seccomp.MASKED_EQ, 0xF, kind)]
        if protocol is not None:
            args.append(seccomp.Arg(2, seccomp.MASKED_EQ, INT32, protocol))
        _allow(filt, "socket", *args)
    for mask, value in allow_all_but([TIOCSTI, TIOCLINUX]):
        _allow(filt, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, mask, value))
    with tempfile.TemporaryFile() as handle:
        filt.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def allow_all_but(excluded: list[int], width: int = 32) -> list[tuple[int, int]]:
    """(mask, value) pairs whose matches, together, are every `width`-bit value except `excluded`.

    libseccomp allows one comparison per argument in a rule, and an unconditional
    rule cannot sit beside a conditional one, so "anything but these" is built
    as a union of masked comparisons. Only the low `width` bits are compared:
    the kernel truncates a 32-bit argument such as ioctl's request, so the high
    bits must not be able to slip a value past the filter.
    """
    full = (1 << width) - 1
    common = [bit for bit in range(width) if len({(e >> bit) & 1 for e in excluded}) == 1]
    differing = [bit for bit in range(width) if bit not in common]
    if len(differing) > 8:
        raise ValueError("the excluded values differ in too many bits for an exact rule set")
    rules = []
    # Any value that differs from the excluded ones on a bit they all share.
    for bit in common:
        rules.append((1 << bit, (~excluded[0] >> bit & 1) << bit))
    # Values that agree on every shared bit: list the other patterns of the rest.
    base = excluded[0] & sum(1 << bit for bit in common)
    taken = {tuple((e >> bit) & 1 for bit in differing) for e in excluded}
    for pattern in range(1 << len(differing)):
        bits = tuple((pattern >> i) & 1 for i in range(len(differing)))
        if bits not in taken:
            rules.append((full, base | sum(b << bit for b, bit in zip(bits, differing, strict=True))))
    return rules


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def load(program: bytes) -> None:
    """Install a BPF program exported by `build` (needs no_new_privs or CAP_SYS_ADMIN)."""
    count = len(program) // ctypes.sizeof(_SockFilter)
    filters = (_SockFilter * count).from_buffer_copy(program)
    prog = _SockFprog(count, filters)
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))


def available() -> bool:
    """Whether this kernel supports seccomp filters (for `fgd doctor`)."""
    try:
        with open("/proc/self/status") as status:
            return any(line.startswith("Seccomp_filters:") for line in status)
    except OSError:
        return False
