"""PID 1 of each instance's sandbox as the daemon runs it (issue 15): the native fgd-pid1, what a
function can do to it, and the Python reaper the daemon falls back to without it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sandbox import reaper
from tests.conftest import Api, Daemon, zygote_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def native_built() -> None:
    """The native PID 1 as `make` builds it (up to date with sandbox/pid1.c)."""
    done = subprocess.run(["make", "--no-print-directory", "-s", "pid1"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def heads(daemon: Daemon) -> list[psutil.Process]:
    """The host view of each instance's PID 1: the children of every zygote (any runtime's)."""
    assert zygote_of(daemon) is not None
    found = []
    for zygote in psutil.Process(daemon.process.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "runtimes.python.zygote" in " ".join(zygote.cmdline()):
                found += zygote.children()
    return found


def settled_heads(daemon: Daemon, native: bool) -> list[psutil.Process]:
    """Every PID 1, once none is still being made (a pool member is Python until it execs)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = heads(daemon)
        names = set()
        for head in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                names.add(head.name())
        if found and (names == {"fgd-pid1"}) == native:
            return found
        time.sleep(0.05)
    raise AssertionError(f"PID 1s never settled: {[(p.pid, p.name()) for p in heads(daemon)]}")


# What the function sees of its PID 1 (as the instance's unprivileged uid, without capabilities).
LOOK_AT_PID1 = """
import errno, os, signal

def outcome(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno}

def handler(event, context):
    read = lambda path: open(path, "rb").read().decode(errors="replace")
    return {
        "cmdline": read("/proc/1/cmdline"),
        "comm": read("/proc/1/comm"),
        "exe": outcome(lambda: os.readlink("/proc/1/exe")),
        "maps": outcome(lambda: read("/proc/1/maps")),
        "fds": outcome(lambda: os.listdir("/proc/1/fd")),
        "mountinfo": read("/proc/self/mountinfo") + read("/proc/1/mountinfo"),
        "signals": {s.name: outcome(lambda: os.kill(1, s)) for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)},
        "ppid": os.getppid(),
    }
"""


def test_an_instances_pid1_is_the_native_reaper_and_out_of_the_functions_reach(daemon: Daemon, api: Api) -> None:
    name = api.deploy(LOOK_AT_PID1)["func_name"]
    seen = api.invoke(name).json()
    # The host's view: every instance's PID 1 runs the program beside the sandbox package.
    for head in settled_heads(daemon, native=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            assert head.exe() == reaper.native_path()
            assert head.num_fds() == 0
    # The function's: a name and its own pid, no host path anywhere (mountinfo: no new mount).
    assert seen["cmdline"] == "fgd-pid1\x002\x00" and seen["comm"] == "fgd-pid1\n"
    assert seen["ppid"] == 1
    assert "fgd-pid1" not in seen["mountinfo"] and str(REPO) not in seen["mountinfo"]
    # Another uid's, not dumpable: nothing of its memory, executable or descriptors; no signal.
    for what in ("exe", "maps", "fds"):
        assert seen[what] == {"ok": False, "errno": 13}, (what, seen[what])
    assert seen["signals"] == {sig: {"ok": False, "errno": 1} for sig in ("SIGKILL", "SIGTERM", "SIGINT")}
    # And the instance still serves.
    assert api.invoke(name).status_code == 200


# Orphans that end at once (each a zombie of PID 1 unless it reaps), many, and one that lives on.
ORPHANS = """
import os, time

def orphan(then):
    if os.fork() == 0:
        if os.fork() == 0:
            then()
        os._exit(0)
    os.wait()

def handler(event, context):
    for _ in range(event.get("orphans", 0)):
        orphan(lambda: os._exit(3))
    if event.get("keep"):
        orphan(lambda: time.sleep(100))
    time.sleep(0.3)
    zombies = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                state, ppid = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue
            if state == "Z":
                zombies.append((int(pid), int(ppid)))
    if event.get("exit") is not None:
        os._exit(event["exit"])
    return {"zombies": zombies, "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
"""


def test_a_functions_orphans_are_reaped_and_a_flood_of_them_ends_cleanly(daemon: Daemon, api: Api) -> None:
    name = api.deploy(ORPHANS, timeout=30)["func_name"]
    first = api.invoke(name, {"orphans": 50, "keep": True}).json()
    assert first["zombies"] == []
    # PID 1, the worker and the orphan that lives on: the 50 that ended are gone.
    assert len(first["pids"]) == 3 and first["pids"][:2] == [1, 2], first
    # A flood (pids are capped by the instance's cgroup); then the worker ends with a status
    # of its own, which reaches the caller through PID 1 as before, and the daemon stays up.
    flood = api.invoke(name, {"orphans": 200}).json()
    assert flood["zombies"] == []
    ended = api.invoke(name, {"exit": 9}).json()
    assert ended["errorType"] == "Runtime.ExitError" and "status 9" in ended["errorMessage"], ended
    assert httpx.get(f"{daemon.url}/healthz").status_code == 200
    assert api.invoke(name).json()["zombies"] == []


def source_without_native_pid1(root: Path) -> Path:
    """A copy of fgd's packages without fgd-pid1 (as a checkout where `make` was not run)."""
    ignore = shutil.ignore_patterns("__pycache__", reaper.NATIVE_NAME)
    for package in ("fgd", "runtimes", "sandbox"):
        shutil.copytree(REPO / package, root / package, ignore=ignore)
    return root


@pytest.mark.slow
def test_without_the_native_pid1_the_python_reaper_serves_and_everyone_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = source_without_native_pid1(tmp_path / "src")
    env = {"PYTHONPATH": str(source)}
    # `python -m fgd` looks in its working directory first: not the checkout's.
    monkeypatch.chdir(tmp_path)
    doctor = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor"], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
    line = next(line for line in doctor.stdout.splitlines() if line.split()[1:3] == ["pid", "1"])
    assert line.startswith("info ") and f"no native reaper: No such file or directory: {source}/sandbox" in line
    assert "build it with `make`" in line
    assert doctor.stdout.strip().endswith("fgd serve can start with every protection")
    daemon = Daemon(tmp_path / "state", env=env)
    daemon.start()
    try:
        api = Api(daemon)
        name = api.deploy(ORPHANS, timeout=30)["func_name"]
        first = api.invoke(name, {"orphans": 20}).json()
        assert first["zombies"] == [] and first["pids"] == [1, 2]
        for head in settled_heads(daemon, native=False):
            assert os.path.basename(head.exe()).startswith("python")
        ended = api.invoke(name, {"exit": 5}).json()
        assert ended["errorType"] == "Runtime.ExitError" and "status 5" in ended["errorMessage"], ended
        log = daemon.log()
        assert "instances' PID 1 is the Python reaper: no native reaper" in log
        assert f"zygote: no native PID 1 (No such file or directory: {source}/sandbox/fgd-pid1)" in log
    finally:
        daemon.stop()


def test_when_the_zygote_dies_every_instance_dies_with_it(fresh_daemon: Daemon) -> None:
    # fgd-pid1 sets its parent-death signal again after the exec: nothing outlives the zygote.
    fresh_daemon.start()
    api = Api(fresh_daemon)
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    assert api.invoke(name).status_code == 200
    instances = settled_heads(fresh_daemon, native=True)
    processes = instances + [worker for head in instances for worker in head.children()]
    assert len(processes) >= 2 * len(instances) >= 2
    os.kill(zygote_of(fresh_daemon) or 0, signal.SIGKILL)

    def gone(process: psutil.Process) -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 5
    while not all(gone(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.pid for p in processes if not gone(p)] == []
    # The daemon starts another zygote, whose instances serve.
    assert api.invoke(name).status_code == 200
