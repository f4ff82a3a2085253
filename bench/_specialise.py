"""Specialisation measured inside the instance, without the daemon (bench/cold_start.py --in-process).

The daemon's event loop, its HTTP server and the pool's refills all share the machine's CPUs
with the instance being specialised, so end-to-end figures on a small, busy host move by
milliseconds from one run to the next. This drives a real zygote (runtimes/python/zygote.py)
as the daemon does, over the same frames: Fork into a new pid namespace, Contain, a wait as in
the pool, then Specialize, and two Invokes of a no-op handler. It reports each step the
instance timed (Ready.timings, unfiltered), the round trips as this side saw them, and what the
first invocation of a fresh instance costs over the second, and the specialised worker's USS
(`worker_uss_kib`: its figures are KiB, under the same percentile keys). No cgroups, no
network: those are the daemon's steps. Needs root (the sandbox is the real one).
"""

from __future__ import annotations

import array
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fgd.sandboxing import CODE_DIR, WORKDIR, host_layout, user_tables  # noqa: E402
from runtimes import protocol  # noqa: E402
from sandbox import seccomp  # noqa: E402
from sandbox.policy import ContainPolicy, EnterPolicy, Mount  # noqa: E402

NOOP = "def handler(event, context):\n    return {}\n"
# As long as a pooled instance waits at least (it prepares while it waits: issue 15).
POOL_WAIT = 0.05
UID_BASE = 200000


class _Zygote:
    def __init__(self, state: Path) -> None:
        programs = {profile: seccomp.build(profile) for profile in seccomp.PROFILES}
        fd = os.memfd_create("fgd-bench-seccomp", 0)
        os.write(fd, msgspec.msgpack.encode(programs))
        os.lseek(fd, 0, os.SEEK_SET)
        self.control, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-s", "-m", "runtimes.python.zygote", str(child.fileno()), str(os.getpid())]
        self.process = subprocess.Popen(
            [*argv, f"--seccomp-fd={fd}"],
            pass_fds=[child.fileno(), fd],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
        child.close()
        os.close(fd)
        mounts, links = host_layout()
        etc = {"passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n", "group": "root:x:0:\n"}
        etc |= {"hostname": "localhost\n", "hosts": "127.0.0.1 localhost\n", "resolv.conf": ""}
        self.policy = ContainPolicy(str(state / "sandbox-root"), str(state), mounts, links, etc, "localhost")

    def _control_frame(self, kind: type) -> protocol.Frame:
        while True:
            frame = protocol.decode(self.control.recv(4096))
            if isinstance(frame, kind):
                return frame

    def fork(self, instance_id: str) -> tuple[socket.socket, list[int], int]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        packet = protocol.encode_packet(protocol.Fork(instance_id, True))
        fds = array.array("i", [theirs.fileno(), out_w, err_w])
        self.control.sendmsg([packet], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        forked = self._control_frame(protocol.Forked)
        assert isinstance(forked, protocol.Forked)
        for fd in (theirs.fileno(), out_w, err_w):
            os.close(fd)
        theirs.detach()
        return ours, [out_r, err_r], forked.pid

    def exited(self) -> None:
        self._control_frame(protocol.Exited)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _exchange(sock: socket.socket, buffer: protocol.FrameBuffer, frame: protocol.Frame) -> protocol.Frame:
    sock.sendall(protocol.encode(frame))
    while True:
        frames = buffer.feed(sock.recv(1 << 16))
        if frames:
            return frames[0]


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _uss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        fields = dict(line.split(":", 1) for line in handle.read().splitlines()[1:])
    return sum(int(fields[name].split()[0]) for name in ("Private_Clean", "Private_Dirty"))


def measure(count: int, percentiles) -> dict:
    """Per step of specialisation: its percentiles (ms) over `count` fresh pooled instances."""
    state = Path(tempfile.mkdtemp(prefix="fgd-bench-specialise-"))
    (state / "sandbox-root").mkdir(mode=0o700)
    code = state / "code" / "noop"
    code.mkdir(parents=True)
    (code / "index.py").write_text(NOOP)
    zygote = _Zygote(state)
    identity = protocol.FunctionIdentity("bench", "default", "noop", "latest", "", 128, 300, 3)
    samples: dict[str, list[float]] = {}
    try:
        for i in range(count):
            sock, pipes, pid1 = zygote.fork(f"bench-{i}")
            buffer = protocol.FrameBuffer(from_instance=True)
            started = time.perf_counter()
            contained = _exchange(sock, buffer, protocol.Contain(zygote.policy))
            assert isinstance(contained, protocol.Contained), contained
            steps = {"contain_round_trip": (time.perf_counter() - started) * 1000}
            time.sleep(POOL_WAIT)
            uid = UID_BASE + i
            policy = EnterPolicy(
                [Mount("code/noop", CODE_DIR)], WORKDIR, 512, uid, uid, etc_files=user_tables(uid, uid)
            )
            environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "RUNTIME_FUNC_NAME": "noop"}
            spec = protocol.Specialize(CODE_DIR, "index.handler", "", 3, environ, identity, sandbox=policy)
            started = time.perf_counter()
            ready = _exchange(sock, buffer, spec)
            steps["specialize_round_trip"] = (time.perf_counter() - started) * 1000
            assert isinstance(ready, protocol.Ready), ready
            steps |= {f"instance.{name}": ms for name, ms in ready.timings.items()}
            for name in ("first_invoke", "second_invoke"):
                started = time.perf_counter()
                result = _exchange(sock, buffer, protocol.Invoke(name, b"{}", time.time() + 3))
                steps[f"{name}_round_trip"] = (time.perf_counter() - started) * 1000
                assert isinstance(result, protocol.Result) and result.error is None, result
            # What the specialised worker (PID 1's child) holds of its own, in KiB.
            steps["worker_uss_kib"] = _uss_kib(_children(pid1)[0])
            for name, ms in steps.items():
                samples.setdefault(name, []).append(ms)
            sock.close()
            zygote.exited()
            for fd in pipes:
                os.close(fd)
    finally:
        zygote.stop()
        shutil.rmtree(state, ignore_errors=True)
    first = statistics.median(samples["first_invoke_round_trip"])
    extra = first - statistics.median(samples["second_invoke_round_trip"])
    return {name: percentiles(values) for name, values in samples.items()} | {
        "first_invoke_extra_p50_ms": round(extra, 3),
        "note": "a real zygote and sandbox driven over the daemon's frames, without the daemon",
    }
