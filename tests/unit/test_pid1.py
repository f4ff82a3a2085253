"""The sandbox's PID 1 (issue 15): the native fgd-pid1 and the Python reaper it replaces.

Each test runs a real PID 1 in a new pid namespace (`unshare --pid --fork`): a Python process
that forks a worker and then does what an instance's PID 1 does (sandbox.reaper.run_pid1).
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from sandbox import reaper

REPO = Path(__file__).resolve().parents[2]

# PID 1 of a new pid namespace: loads the native reaper (or not), forks the worker, which runs
# the code in argv[2] (then exits 0), and becomes PID 1 as contain() makes it.
HARNESS = """
import os, signal, sys, time
from sandbox import reaper
if sys.argv[1] == "native":
    assert reaper.load_native(), "no native PID 1"
worker = os.fork()
if worker == 0:
    reaper.forget_native()
    exec(sys.argv[2])
    os._exit(0)
reaper.run_pid1(worker)
"""


@pytest.fixture(scope="module", autouse=True)
def native_built() -> None:
    """The native PID 1 as `make` builds it (up to date with sandbox/pid1.c)."""
    done = subprocess.run(["make", "--no-print-directory", "-s", "pid1"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(reaper.native_path(), os.X_OK)


def start_pid1(kind: str, worker: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """`unshare` with PID 1 under it; its exit status is PID 1's (a signal death as 128 + n)."""
    argv = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        sys.executable,
        "-c",
        HARNESS,
        kind,
        textwrap.dedent(worker),
    ]
    return subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=preexec_fn)


def pid1_of(unshare: subprocess.Popen, *, exe: str | None = None, within: float = 5.0) -> psutil.Process:
    """The host view of the PID 1 under `unshare` (once it runs `exe`, if given)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        children = psutil.Process(unshare.pid).children()
        if children and (exe is None or os.path.basename(children[0].exe()) == exe):
            return children[0]
        time.sleep(0.01)
    raise AssertionError(f"no PID 1 running {exe} under unshare")


def exit_of(kind: str, worker: str) -> int:
    process = start_pid1(kind, worker)
    return process.wait(10)


@pytest.mark.parametrize("kind", ["native", "python"])
def test_pid1_exits_like_its_worker(kind: str) -> None:
    assert exit_of(kind, "os._exit(7)") == 7
    assert exit_of(kind, "os._exit(0)") == 0
    # A signal death as 128 + n, which the zygote turns back into the signal.
    code = exit_of(kind, "os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)")
    assert code == 128 + signal.SIGTERM and reaper.decode_pid1_exit(code) == -signal.SIGTERM
    code = exit_of(kind, "os.kill(os.getpid(), signal.SIGKILL)")
    assert reaper.decode_pid1_exit(code) == -signal.SIGKILL


# The worker leaves orphans that end at once (each becomes a zombie child of PID 1 unless reaped),
# and one that lives on, then idles so the host can look at PID 1's children.
ORPHANS = """
for _ in range(20):
    if os.fork() == 0:
        if os.fork() == 0:
            os._exit(3)
        os._exit(0)
    os.wait()
if os.fork() == 0:
    if os.fork() == 0:
        time.sleep(30)
    os._exit(0)
os.wait()
open(READY, "w").close()
time.sleep(30)
"""


@pytest.mark.parametrize("kind", ["native", "python"])
def test_pid1_reaps_every_orphan(kind: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    process = start_pid1(kind, f"READY = {str(ready)!r}\n" + textwrap.dedent(ORPHANS))
    try:
        pid1 = pid1_of(process, exe="fgd-pid1" if kind == "native" else None)
        deadline = time.monotonic() + 5
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists()

        def zombies() -> list[int]:
            found = []
            for child in pid1.children():
                try:
                    if child.status() == psutil.STATUS_ZOMBIE:
                        found.append(child.pid)
                except psutil.NoSuchProcess:
                    continue
            return found

        # Once the worker is done: it and the orphan that lives on are PID 1's children, and
        # none of the 20 that ended is left.
        deadline = time.monotonic() + 5
        while (len(pid1.children()) != 2 or zombies()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(pid1.children()) == 2 and zombies() == []
    finally:
        process.kill()
        process.wait(5)


# rt_sigaction(2)'s number, to set what libc's sigaction refuses (its own signals 32 and 33).
RT_SIGACTION = {"x86_64": 13, "aarch64": 134}


def ignore_libcs_signals() -> None:
    """In the child before exec: ignore signals 32 and 33, as a parent of the daemon may have
    (a clean-clone CI run found fgd-pid1 with 32 ignored, which libc's sigaction cannot reset)."""
    libc = ctypes.CDLL(None, use_errno=True)
    ignore = (ctypes.c_ulong * 4)(1, 0, 0, 0)  # SIG_IGN, no flags, no restorer, empty mask
    for signum in (32, 33):
        if libc.syscall(RT_SIGACTION[os.uname().machine], signum, ignore, None, 8) != 0:
            os._exit(99)


@pytest.mark.parametrize("inherited", ["defaults", "libc's signals ignored"])
def test_native_pid1_holds_nothing_and_names_no_host_path(inherited: str) -> None:
    process = start_pid1("native", "time.sleep(30)", ignore_libcs_signals if inherited != "defaults" else None)
    try:
        pid1 = pid1_of(process, exe="fgd-pid1")
        # Settled: waiting for its children (the exec is seen before its first steps are done).
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid1.pid}/wchan").read_text() != "do_wait" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Path(f"/proc/{pid1.pid}/wchan").read_text() == "do_wait"
        assert pid1.name() == "fgd-pid1"
        assert Path(pid1.exe()) == Path(reaper.native_path())
        # What the sandbox sees of it: its name and the worker's pid, no path; no descriptor
        # inherited (not stdio, not the protocol socket, not the program's own).
        assert Path(f"/proc/{pid1.pid}/cmdline").read_bytes() == b"fgd-pid1\x002\x00"
        assert os.listdir(f"/proc/{pid1.pid}/fd") == []
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid1.pid}/status").read_text().splitlines())
        # Not dumpable: /proc/1's files are root's, ptrace refused without CAP_SYS_PTRACE.
        assert os.stat(f"/proc/{pid1.pid}/mem").st_uid == 0
        # Nothing blocked, ignored or caught: the kernel drops the namespace's signals to PID 1.
        for field in ("SigBlk", "SigIgn", "SigCgt"):
            assert int(status[field], 16) == 0, (field, status[field])
        assert status["Threads"].strip() == "1"
    finally:
        process.kill()
        process.wait(5)


# A worker running as root (the function never is) sends PID 1 every signal there is, then ends.
SIGNALS_TO_PID1 = """
# Once PID 1 waits (before, it is still the Python process that forked us, as in a sandbox
# before the function is even loaded).
deadline = time.time() + 5
while open("/proc/1/wchan").read() != "do_wait" and time.time() < deadline:
    time.sleep(0.01)
for signum in sorted(signal.valid_signals()):
    if signum not in (signal.SIGSTOP,):
        os.kill(1, signum)
time.sleep(0.3)
os._exit(9)
"""


@pytest.mark.parametrize("kind", ["native", "python"])
def test_pid1_survives_every_signal_from_inside_its_namespace(kind: str) -> None:
    # Had any signal reached PID 1, the namespace would have died with it (a SIGKILL status).
    # (Python's own PID 1 would have raised KeyboardInterrupt on SIGINT before it reset handlers.)
    assert exit_of(kind, SIGNALS_TO_PID1) == 9


@pytest.mark.parametrize(
    "argv",
    [[], ["2", "3"], [""], ["abc"], ["-2"], ["+2"], [" 2"], ["2 "], ["02"], ["0"], ["4194305"], ["9" * 40], ["2x"]],
)
def test_native_pid1_refuses_a_bad_argument(argv: list[str]) -> None:
    done = subprocess.run([reaper.native_path(), *argv], timeout=5)
    assert done.returncode == 125


def test_native_pid1_refuses_a_worker_that_is_not_its_child() -> None:
    # Not a pid namespace's PID 1, it is its own subreaper: no child at all, so no such worker.
    done = subprocess.run([reaper.native_path(), str(os.getpid())], timeout=5)
    assert done.returncode == 125


def test_an_unfit_native_pid1_is_not_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "fgd-pid1"
    assert reaper.check_native(str(missing)) == (False, f"No such file or directory: {missing} ({reaper._FALLBACK})")
    # Others could replace it, and every sandbox's PID 1 would run their program: refused.
    writable = tmp_path / "writable"
    writable.write_bytes(Path(reaper.native_path()).read_bytes())
    writable.chmod(0o777)
    ok, why = reaper.check_native(str(writable))
    assert not ok and why.startswith("owned or writable by others than root")
    not_executable = tmp_path / "plain"
    not_executable.write_bytes(b"\x7fELF")
    not_executable.chmod(0o644)
    assert reaper.check_native(str(not_executable))[1].startswith("not an executable file")
    # The zygote says so on its stderr (the daemon's log), and its instances keep the Python reaper.
    code = subprocess.run(
        [sys.executable, "-c", f"from sandbox import reaper; print(reaper.load_native({str(missing)!r}))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert code.stdout.strip() == "False"
    assert f"zygote: no native PID 1 (No such file or directory: {missing})" in code.stderr
    assert "build it with `make`" in code.stderr
    assert stat.S_IMODE(os.stat(reaper.native_path()).st_mode) & 0o022 == 0
