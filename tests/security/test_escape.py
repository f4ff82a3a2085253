"""Attacks from inside a function: each must fail, and the daemon must go on serving others.

These run against the real kernel: namespaces, cgroups, seccomp and the
unprivileged function user are all in force.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import BACKGROUND_SLEEP, Api, _zombie, marker, pids_with, wait_none_with

ATTACK = """
import ctypes, errno, json, os, socket, sys

libc = ctypes.CDLL(None, use_errno=True)

def outcome(action):
    try:
        value = action()
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": getattr(exc, "errno", None)}
    return {"ok": True, "value": value}

def syscall(number, *args):
    def call():
        result = libc.syscall(ctypes.c_long(number), *args)
        if result < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return result
    return outcome(call)
"""


@pytest.fixture(scope="module")
def canary(api: Api) -> str:
    return api.deploy("def handler(e, c):\n    return 'still serving'\n")["func_name"]


def attack(api: Api, canary: str, body: str, **settings) -> dict:
    """Run `body` (the handler's body, returning a JSON value) inside a function; check the daemon after."""
    source = ATTACK + "\ndef handler(event, context):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    name = api.deploy(source, **settings)["func_name"]
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "false", response.text
    assert_still_serving(api, canary)
    return response.json()


def assert_still_serving(api: Api, canary: str) -> None:
    response = api.invoke(canary)
    assert response.status_code == 200
    assert response.content == b"still serving"


def test_cannot_read_etc_shadow(api: Api, canary: str) -> None:
    result = attack(api, canary, "return outcome(lambda: open('/etc/shadow').read())")
    assert result["ok"] is False and result["error"] == "FileNotFoundError"


def test_cannot_see_daemon_state_or_token(api: Api, canary: str) -> None:
    state = str(api.daemon.state_dir)
    body = f"""
        return [outcome(lambda: os.listdir({state!r})),
                outcome(lambda: open({state + "/admin.token"!r}).read()),
                outcome(lambda: open({state + "/fgd.db"!r}, "rb").read(10))]
    """
    for result in attack(api, canary, body):
        assert result["ok"] is False and result["error"] == "FileNotFoundError"


def test_cannot_see_another_functions_code(api: Api, canary: str) -> None:
    other = api.deploy("SECRET = 'other function secret'\ndef handler(e, c):\n    return 1\n")
    tree = api.daemon.state_dir / "code"
    trees = [str(p) for p in tree.iterdir()]
    body = f"""
        found = []
        # Everything but the kernel's views and the read-only runtime trees (/usr, the interpreter).
        skip = ("/proc", "/sys", "/dev", "/usr", sys.base_prefix)
        for root, dirs, files in os.walk("/"):
            if root.startswith(skip):
                dirs[:] = []
                continue
            for name in files:
                try:
                    if b"other function " + b"secret" in open(os.path.join(root, name), "rb").read(1 << 20):
                        found.append(os.path.join(root, name))
                except OSError:
                    pass
        return {{"found": found, "code": sorted(os.listdir("/opt/function/code")),
                "trees": [outcome(lambda t=t: os.listdir(t)) for t in {trees!r}]}}
    """
    result = attack(api, canary, body, timeout=30)
    assert other["func_name"]
    assert result["found"] == []
    assert result["code"] == ["index.py"]
    assert all(t["ok"] is False for t in result["trees"])


def test_cannot_write_code_or_outside_tmp(api: Api, canary: str) -> None:
    body = """
        def write(path):
            with open(path, "w") as f:
                f.write("x")
        targets = ["/opt/function/code/index.py", "/opt/function/code/new.py", "/opt/function/x", "/etc/x",
                   "/usr/x", "/x", os.__file__]
        tmp = outcome(lambda: (write("/tmp/ok"), open("/tmp/ok").read())[1])
        return {"denied": [outcome(lambda p=p: write(p)) for p in targets], "tmp": tmp}
    """
    result = attack(api, canary, body)
    for denied in result["denied"]:
        assert denied["ok"] is False, denied
        assert denied["errno"] in (1, 13, 30), denied  # EPERM, EACCES, EROFS
    assert result["tmp"] == {"ok": True, "value": "x"}


def test_proc_shows_only_the_instance(api: Api, canary: str) -> None:
    body = """
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        return {"pids": pids, "me": os.getpid(), "ppid": os.getppid(),
                "cmdlines": [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in pids]}
    """
    result = attack(api, canary, body)
    assert result["me"] == 2 and result["ppid"] == 1
    assert result["pids"] == [1, 2]


def test_kill_everything_reaches_only_the_instance(api: Api, canary: str) -> None:
    # Another function's instance with a process of its own, alive before the attack.
    mark = marker()
    other = api.deploy(BACKGROUND_SLEEP + "def handler(e, c):\n    return 1\n", user_data={"FGD_TEST_MARK": mark})
    assert api.invoke(other["func_name"]).status_code == 200
    assert pids_with(mark)
    body = """
        import signal, subprocess, time
        child = subprocess.Popen(["sleep", "100"])
        killed = outcome(lambda: os.kill(-1, signal.SIGKILL))
        deadline = time.time() + 2
        while child.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        return {"kill": killed, "child": child.poll(), "ppid": os.getppid(),
                "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    """
    result = attack(api, canary, body)
    # The signal went out and reached what it may: the instance's own child died of it ...
    assert result["kill"] == {"ok": True, "value": None}
    assert result["child"] == -9
    # ... but not the caller, nor PID 1 of the sandbox (still our parent), nor anything outside.
    assert result["ppid"] == 1
    assert result["pids"] == [1, 2]
    assert [pid for pid in pids_with(mark) if not _zombie(pid)], "another function's process was killed"


def test_cannot_become_root(api: Api, canary: str) -> None:
    body = """
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
        return {"setuid": outcome(lambda: os.setuid(0)), "setgid": outcome(lambda: os.setgid(0)),
                "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "caps": [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
                "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip()}
    """
    result = attack(api, canary, body)
    assert result["setuid"]["ok"] is False and result["setgid"]["ok"] is False
    assert result["uid"] != 0 and result["gid"] != 0
    assert result["groups"] == []
    assert result["caps"] == ["0000000000000000"] * 5
    assert result["no_new_privs"] == "1"
    assert result["seccomp"] == "2"


@pytest.mark.parametrize(
    ("call", "number"),
    [
        ("mount", "165, b'none', b'/tmp', b'tmpfs', 0, None"),
        ("unshare", "272, 0x20000000"),
        ("setns", "308, 0, 0"),
        ("ptrace", "101, 16, 1, 0, 0"),  # PTRACE_ATTACH to PID 1
        ("bpf", "321, 0, 0, 0"),
        ("keyctl", "250, 0, 0, 0"),
        ("add_key", "248, b'user', b'k', b'v', 1, 0"),
        ("perf_event_open", "298, 0, 0, -1, -1, 0"),
        ("userfaultfd", "323, 0"),
        ("init_module", "175, 0, 0, b''"),
        ("pivot_root", "155, b'/tmp', b'/tmp'"),
        ("chroot", "161, b'/tmp'"),
        ("open_by_handle_at", "304, 0, 0, 0"),
        ("io_uring_setup", "425, 1, 0"),
        ("clone3", "435, 0, 0"),
    ],
)
def test_dangerous_system_calls_are_refused(api: Api, canary: str, call: str, number: str) -> None:
    result = attack(api, canary, f"return syscall({number})")
    assert result["ok"] is False, (call, result)
    expected = 38 if call in ("io_uring_setup", "clone3") else 1  # ENOSYS, EPERM
    assert result["errno"] == expected, (call, result)


def test_raw_and_packet_sockets_are_refused(api: Api, canary: str) -> None:
    body = """
        return [outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                outcome(lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)),
                outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)),
                outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0))]
    """
    for result in attack(api, canary, body):
        assert result["ok"] is False and result["error"] == "PermissionError", result


def test_vsock_uevent_netlink_and_high_bit_families_are_refused(api: Api, canary: str) -> None:
    body = """
        AF_VSOCK, NETLINK_KOBJECT_UEVENT, SYS_SOCKET, SYS_PIDFD_GETFD = 40, 15, 41, 438
        def raw_socket(family, kind, protocol):
            # Through syscall(2) with 64-bit arguments: the kernel reads only the low 32 bits.
            return syscall(SYS_SOCKET, ctypes.c_long(family), ctypes.c_long(kind), ctypes.c_long(protocol))
        route = outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
        pidfd = os.pidfd_open(os.getpid())
        return {
            "refused": [
                outcome(lambda: socket.socket(AF_VSOCK, socket.SOCK_STREAM)),
                outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)),
                outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 9)),
                raw_socket(socket.AF_PACKET | 1 << 32, socket.SOCK_DGRAM, 0),
                raw_socket(socket.AF_PACKET | 1 << 32, socket.SOCK_RAW, 0),
                raw_socket(AF_VSOCK | 1 << 32, socket.SOCK_STREAM, 0),
                raw_socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT | 1 << 32),
                syscall(SYS_PIDFD_GETFD, ctypes.c_long(pidfd), ctypes.c_long(0), ctypes.c_long(0)),
            ],
            "route": route,
            "inet": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        }
    """
    result = attack(api, canary, body)
    for refused in result["refused"]:
        assert refused["ok"] is False and refused["errno"] == 1, refused  # EPERM from the filter
    assert result["route"] == {"ok": True, "value": None}
    assert result["inet"] == {"ok": True, "value": None}


def test_event_function_cannot_listen(api: Api, canary: str) -> None:
    body = """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        return outcome(lambda: s.listen())
    """
    result = attack(api, canary, body)
    assert result["ok"] is False and result["error"] == "PermissionError"


def test_cannot_reach_the_daemon_or_the_host_network(api: Api, canary: str) -> None:
    body = f"""
        def connect(address):
            with socket.create_connection(address, timeout=1):
                return "connected"
        return {{"daemon": outcome(lambda: connect(("127.0.0.1", {api.daemon.port}))),
                 "interfaces": sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])}}
    """
    result = attack(api, canary, body)
    assert result["daemon"]["ok"] is False and result["daemon"]["error"] == "ConnectionRefusedError"
    assert result["interfaces"] == ["lo"]


def test_memory_hog_gets_out_of_memory_error(api: Api, canary: str) -> None:
    source = (
        "def handler(event, context):\n    if event.get('hog'):\n        b = b'x' * (500 << 20)\n    return 'fine'\n"
    )
    name = api.deploy(source, memory_size=128, timeout=20)["func_name"]
    response = api.invoke(name, {"hog": True})
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "Runtime.OutOfMemory"
    assert "128 MB" in body["errorMessage"]
    assert_still_serving(api, canary)
    again = api.invoke(name)
    assert again.content == b"fine"
    assert json.loads(again.headers["x-cff-invoke-summary"])["coldStart"] is True


def test_fork_bomb_stops_at_the_pids_limit(api: Api, canary: str) -> None:
    body = """
        import time
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as exc:
            return {"children": children, "errno": exc.errno}
    """
    # Enough memory that the pids limit, not the memory limit, is what stops it.
    result = attack(api, canary, body, timeout=20, memory_size=1024)
    assert result["errno"] == 11  # EAGAIN from the pids cgroup
    assert 900 < result["children"] < 1024


def test_subprocess_left_running_is_killed_when_the_instance_is_recycled(api: Api, canary: str) -> None:
    mark = marker()
    name = api.deploy(
        BACKGROUND_SLEEP + "def handler(e, c):\n    return 'returned'\n", user_data={"FGD_TEST_MARK": mark}
    )["func_name"]
    assert api.invoke(name).content == b"returned"
    assert pids_with(mark), "the background process should outlive the request while the instance is warm"
    api.http.put(f"/functions/{name}/config", json={"description": "recycle"})
    assert wait_none_with(mark)
    assert_still_serving(api, canary)


def test_garbage_on_the_protocol_socket_kills_only_that_instance(api: Api, canary: str) -> None:
    body = """
        import stat, time
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.write(fd, b"\\x00\\x00\\x00\\x10" + b"\\xc1" * 16 + os.urandom(4096))
            except OSError:
                pass
        time.sleep(5)
        return "survived"
    """
    source = ATTACK + "\ndef handler(event, context):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    name = api.deploy(source, timeout=10)["func_name"]
    response = api.invoke(name)
    assert response.headers["x-is-func-err"] == "true"
    assert response.json()["errorType"] == "Runtime.ExitError"
    assert "protocol" in response.json()["errorMessage"]
    assert_still_serving(api, canary)
