"""Attacker pass on the native PID 1 (issue 15), as a hostile function sees it.

The function runs as the instance's unprivileged uid under seccomp, in a pid namespace whose
PID 1 is fgd-pid1 (exec'd by the sandbox's first process from a descriptor the zygote opened).
Each test tries one way across: signalling or tracing PID 1, reading it through /proc, finding
the zygote's descriptor of the program, leaving processes behind that outlive the worker, or
exiting with a status that reads like a signal. Each asserts the safe outcome.
"""

from __future__ import annotations

import contextlib
import time

import httpx
import psutil
import pytest

from sandbox import reaper
from tests.conftest import Api, Daemon

# Every way to reach PID 1 from inside, each recorded as ok/errno.
PROBE = r"""
import ctypes, errno, os, signal

libc = ctypes.CDLL(None, use_errno=True)

def outcome(action):
    try:
        return {"ok": True, "value": repr(action())[:200]}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno}

def syscall_result(value):
    if value == -1:
        raise OSError(ctypes.get_errno(), "")
    return value

def pidfd_signal(sig):
    fd = os.pidfd_open(1)
    try:
        return syscall_result(libc.syscall(424, fd, sig, None, 0))  # pidfd_send_signal
    finally:
        os.close(fd)

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def vm_read():
    buffer = ctypes.create_string_buffer(64)
    local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 64)
    remote = IoVec(0x400000, 64)
    return syscall_result(libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))

def read(path):
    with open(path, "rb") as handle:
        return handle.read(64)

def state():
    return open("/proc/1/stat").read().rsplit(")", 1)[1].split()[0]

def handler(event, context):
    found = {}
    sigs = [s for s in range(1, signal.SIGRTMAX + 1) if s not in (32, 33)]  # glibc's own
    found["kill"] = {s: outcome(lambda s=s: os.kill(1, s)) for s in sigs}
    found["pidfd"] = {s: outcome(lambda s=s: pidfd_signal(s)) for s in (9, 15, 19, 18, 34)}
    found["group"] = outcome(lambda: os.killpg(1, 9))
    found["all"] = outcome(lambda: os.kill(-1, 0))
    found["state"] = state()
    found["ptrace"] = outcome(lambda: syscall_result(libc.ptrace(16, 1, None, None)))  # PTRACE_ATTACH
    found["seize"] = outcome(lambda: syscall_result(libc.ptrace(0x4206, 1, None, None)))  # PTRACE_SEIZE
    found["vm_read"] = outcome(vm_read)
    for name in ("mem", "environ", "auxv", "syscall", "stack", "pagemap", "personality"):
        found[name] = outcome(lambda name=name: read(f"/proc/1/{name}"))
    for name in ("exe", "root", "cwd"):
        found[name] = outcome(lambda name=name: os.readlink(f"/proc/1/{name}"))
        found[name + "_open"] = outcome(lambda name=name: os.listdir(f"/proc/1/{name}"))
    for name in ("fd", "fdinfo", "map_files"):
        found[name] = outcome(lambda name=name: os.listdir(f"/proc/1/{name}"))
    # Our own descriptors: none may be the zygote's O_PATH one of the program, or any host file.
    own = {}
    for fd in os.listdir("/proc/self/fd"):
        with __import__("contextlib").suppress(OSError):
            own[fd] = os.readlink(f"/proc/self/fd/{fd}")
    found["own_fds"] = own
    found["state_after"] = state()
    return found
"""


def test_pid1_takes_no_signal_trace_or_read_from_the_function(daemon: Daemon, api: Api) -> None:
    name = api.deploy(PROBE)["func_name"]
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    seen = response.json()
    # Every signal, by kill, pidfd or process group, is refused: PID 1 is root's and we are not.
    refused = {"ok": False, "errno": 1}
    # Except SIGCONT: the kernel lets it through within a session, and the worker shares PID 1's.
    # It only resumes a stopped process, and PID 1 cannot be stopped (SIGSTOP is refused, below).
    odd = {s: r for s, r in seen["kill"].items() if r != refused}
    assert odd == {"18": {"ok": True, "value": "None"}}, odd
    odd = {s: r for s, r in seen["pidfd"].items() if r != refused}
    assert odd == {"18": {"ok": True, "value": "0"}}, odd
    # killpg(1): PID 1 leads no group of ours (ESRCH) or refuses it (EPERM); never delivered.
    assert seen["group"]["ok"] is False and seen["group"]["errno"] in (1, 3), seen["group"]
    # SIGSTOP included: PID 1 never stopped (S: sleeping in waitpid).
    assert seen["state"] == "S" and seen["state_after"] == "S", seen
    # No tracing, no reading its memory (seccomp refuses ptrace; the kernel the rest).
    for what in ("ptrace", "seize", "vm_read"):
        assert seen[what]["ok"] is False and seen[what]["errno"] in (1, 13), (what, seen[what])
    for what in ("mem", "environ", "auxv", "syscall", "stack", "pagemap", "personality"):
        assert seen[what]["ok"] is False and seen[what]["errno"] in (1, 13), (what, seen[what])
    for what in ("exe", "root", "cwd", "exe_open", "root_open", "cwd_open", "fd", "fdinfo", "map_files"):
        assert seen[what]["ok"] is False and seen[what]["errno"] in (1, 13), (what, seen[what])
    # The worker holds stdio and its socket, nothing that names a file of the host.
    for fd, target in seen["own_fds"].items():
        assert target.startswith(("pipe:", "socket:", "/proc/", "/dev/null")), (fd, target)
        assert "fgd-pid1" not in target and "sandbox" not in target, (fd, target)
    # PID 1 took all of that and the instance serves on.
    assert api.invoke(name).status_code == 200
    assert httpx.get(f"{daemon.url}/healthz").status_code == 200


# Leave behind processes that try to outlive the worker: a subreaper worker, a double-forked
# child in its own session that ignores SIGTERM and names itself, then the worker exits.
LINGER = r"""
import ctypes, os, signal, time

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME, PR_SET_CHILD_SUBREAPER = 15, 36

def linger(tag):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            libc.prctl(PR_SET_NAME, tag.encode(), 0, 0, 0)
            while True:
                time.sleep(1)
        os._exit(0)

def handler(event, context):
    if event.get("subreaper"):
        assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    for _ in range(event.get("count", 1)):
        linger(event["tag"])
    time.sleep(0.2)
    if event.get("exit") is not None:
        os._exit(event["exit"])
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
"""


def named(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] == tag:
                found.append(process)
    return found


def gone_within(tag: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not named(tag):
            return True
        time.sleep(0.05)
    return False


def test_processes_a_function_leaves_do_not_outlive_its_worker(daemon: Daemon, api: Api) -> None:
    name = api.deploy(LINGER, timeout=10)["func_name"]
    tag = f"fgdlinger{time.monotonic_ns() % 100000}"
    # As a subreaper the worker takes the orphans itself; in their own session, ignoring SIGTERM.
    alive = api.invoke(name, {"tag": tag, "count": 5, "subreaper": True})
    assert alive.status_code == 200, alive.text
    assert len(named(tag)) == 5
    # The worker exits: PID 1 exits like it and the kernel kills the rest of the namespace.
    ended = api.invoke(name, {"tag": tag, "count": 0, "exit": 0}).json()
    assert ended["errorType"] == "Runtime.ExitError", ended
    assert gone_within(tag, 5), [p.pid for p in named(tag)]
    # Exit codes that look like signal deaths: the caller is told the process ended, never that
    # memory ran out; the daemon is unharmed and the function starts afresh. (PID 1 encodes a
    # signal death as 128 + n, so exit(137) reads as SIGKILL: the same outcome the function
    # gets by killing itself, which it may, so it learns and claims nothing more.)
    # 160 and 192 name signals 32 and 64, which Python's enum has no name for.
    for code in (137, 128 + 31, 160, 192, 193, 255):
        told = api.invoke(name, {"tag": tag, "count": 1, "exit": code}).json()
        assert told["errorType"] == "Runtime.ExitError", (code, told)
        message = told["errorMessage"]
        assert f"status {code}" in message or "killed by signal" in message, (code, message)
        assert gone_within(tag, 5), code
    assert httpx.get(f"{daemon.url}/healthz").status_code == 200
    assert api.invoke(name, {"tag": tag, "count": 0}).status_code == 200


FDS = """
import os

def handler(event, context):
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return found
"""


def test_without_namespaces_or_fd_closing_the_worker_holds_no_descriptor_of_fgd_pid1(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The zygote's descriptor of fgd-pid1 is for PID 1 of a pid namespace; an instance forked
    without one (namespaces off) has no PID 1 of its own and must not keep it, even when
    descriptors are not closed either (before: the worker held an O_PATH descriptor of the
    program, /proc/self/fd/N, an executable of the host outside its reach otherwise)."""
    config = '[sandbox]\nallow_degraded = true\ndisable = ["namespaces", "fds"]\n'
    daemon = Daemon(tmp_path_factory.mktemp("no-ns-fds") / "state", config)
    daemon.start()
    try:
        api = Api(daemon)
        response = api.invoke(api.deploy(FDS)["func_name"])
        assert response.status_code == 200, response.text
        links = response.json()
        assert not [link for link in links.values() if link.endswith(reaper.NATIVE_NAME)], links
    finally:
        daemon.stop()
