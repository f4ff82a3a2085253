"""A zygote whose daemon goes away with the zygote's frames unread (killed, or stopping while it
started instances) exits quietly: the reset on its control socket is the same news as an end of
file, not a traceback in the daemon's log (found by a restart test of hostile reserved counts)."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import time

from runtimes import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_zygote_left_with_unread_frames_exits_without_a_traceback() -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote = subprocess.Popen(
        [sys.executable, "-m", "runtimes.python.zygote", str(child.fileno()), str(os.getpid())],
        cwd=ROOT,
        pass_fds=[child.fileno()],
        stderr=subprocess.PIPE,
    )
    child.close()
    instance_ours, instance_theirs = socket.socketpair()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    fds = array.array("i", [instance_theirs.fileno(), out_w, err_w])
    frame = protocol.encode_packet(protocol.Fork("i1"))
    parent.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    # The zygote forks and answers Forked; the daemon reads nothing and goes (its instance with it).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not parent.recv(1, socket.MSG_PEEK):
        time.sleep(0.01)
    instance_ours.close()
    parent.close()
    try:
        code = zygote.wait(10)
    finally:
        zygote.kill()
    stderr = zygote.stderr.read().decode(errors="replace")
    for fd in (out_r, out_w, err_r, err_w):
        os.close(fd)
    instance_theirs.close()
    assert "Traceback" not in stderr, stderr
    assert code == 0, (code, stderr)
