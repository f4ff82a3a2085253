"""Issue 13: the privileged keeper of a pooled Node.js instance.

Node.js cannot fork a warmed V8, so a Node pool member is a contained, started `node`
waiting for its function. It is made like every instance: forked by a Python zygote and
contained (`sandbox.contain.contain`); the contained worker (PID 2 of the sandbox, still
root with the capabilities a mount needs) then gets a `Launch` frame and becomes the
node's keeper:

1. it forks a child that applies the *drop* half of the sandbox (`sandbox.contain.drop`:
   its own uid, no capabilities, no_new_privs, rlimits, closed descriptors, seccomp) and
   execs node with the protocol socket as fd 3 and a private channel to the keeper as fd 4;
2. it waits on that channel for exactly one request: the `Specialize` frame node received,
   forwarded before any function code is loaded; it applies the *mount* half
   (`sandbox.contain.enter_mounts`: code and dependency binds, /etc user tables, /tmp size)
   in the mount namespace node shares, answers, and closes the channel. Anything later on
   it is never read: the channel is gone;
3. it waits for node and exits like it (the same code, or the same signal), which PID 1 and
   the zygote's child pass on to the daemon as the instance's exit status.

Runs in the daemon's own interpreter (the zygote of a Node pool is that one's).
"""

from __future__ import annotations

import contextlib
import os
import socket
import traceback
from typing import NoReturn

from runtimes import protocol
from runtimes.protocol import Launch, Specialize
from sandbox.contain import ContainmentFailed, drop, enter_mounts
from sandbox.reaper import wait_and_exit_like

# Where the launched process finds the protocol socket and its channel to the keeper.
SOCKET_FD = 3
KEEPER_FD = 4
# Status of a child that could not become node (the daemon reports the message it sent).
LAUNCH_FAILED = 71
# A Specialize frame is small (a policy, an environment of at most a few KB); a bigger
# request is not one node forwards honestly and is refused unread.
MAX_REQUEST = 4 * 1024 * 1024


def launch(sock: socket.socket, frame: Launch, programs: dict[str, bytes]) -> NoReturn:
    """Start the launched process and keep it; never returns."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        ours.close()
        _become_launched(sock, theirs, frame, programs)
    theirs.close()
    # Only node speaks to the daemon from here on: the daemon sees EOF when node is gone.
    sock.close()
    _serve_one_request(ours, frame)
    ours.close()
    # Node's exit code, or its signal as 128 + n, which PID 1 and the zygote's child pass on.
    wait_and_exit_like(child)


def _become_launched(
    sock: socket.socket, channel: socket.socket, frame: Launch, programs: dict[str, bytes]
) -> NoReturn:
    try:
        os.dup2(sock.fileno(), SOCKET_FD)
        os.dup2(channel.fileno(), KEEPER_FD)
        if frame.sandbox is not None:
            policy = frame.sandbox
            drop(policy, {SOCKET_FD, KEEPER_FD}, programs.get(policy.seccomp_profile))
        for fd in (SOCKET_FD, KEEPER_FD):
            os.set_inheritable(fd, True)
        os.execve(frame.argv[0], frame.argv, frame.environ)
    except (ContainmentFailed, OSError) as exc:
        message = f"cannot start {os.path.basename(frame.argv[0]) if frame.argv else 'the runtime'}: {exc}"
        with contextlib.suppress(OSError):
            os.write(SOCKET_FD, protocol.encode(protocol.ContainError(message)))
        os._exit(LAUNCH_FAILED)
    except BaseException:  # noqa: BLE001 - the child must never return into the keeper's code
        traceback.print_exc()
        os._exit(LAUNCH_FAILED)


def _read_request(channel: socket.socket) -> bytes | None:
    """One framed request, or None when node closed the channel (it died) or sent garbage."""
    data = bytearray()
    while True:
        if len(data) >= protocol.HEADER.size:
            (size,) = protocol.HEADER.unpack_from(data)
            if size > MAX_REQUEST:
                return None
            if len(data) >= protocol.HEADER.size + size:
                return bytes(data[protocol.HEADER.size : protocol.HEADER.size + size])
        try:
            chunk = channel.recv(1 << 16)
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk


def _serve_one_request(channel: socket.socket, frame: Launch) -> None:
    """The mount half for node's Specialize, once; an answer of b"ok" or b"error: ..."."""
    body = _read_request(channel)
    if body is None:
        return
    try:
        spec = protocol.decode(body)
        if not isinstance(spec, Specialize):
            raise ContainmentFailed(f"expected a Specialize frame, got {type(spec).__name__}")
        # The uid node already runs as must be the one the user tables name: the daemon
        # built both from the same instance; a frame saying otherwise is refused.
        if spec.sandbox is not None and frame.sandbox is not None:
            if (spec.sandbox.uid, spec.sandbox.gid) != (frame.sandbox.uid, frame.sandbox.gid):
                raise ContainmentFailed("the Specialize frame names another uid than the launched process has")
            enabled = spec.sandbox.protections
            if enabled.credentials and not (enabled.mounts and enabled.namespaces):
                # Without mounts the code stays in the daemon's state dir, which the function's uid
                # cannot read, and node cannot be handed open directories the way Python is.
                raise ContainmentFailed(
                    "Node.js functions need the sandbox's mounts to show their code, and this host runs "
                    "without them; enable mounts (or, on a test host, switch credentials off too)"
                )
            enter_mounts(spec.sandbox)
        answer = b"ok"
    except (ContainmentFailed, protocol.ProtocolError, OSError) as exc:
        answer = f"error: {exc}".encode(errors="replace")
    try:
        channel.sendall(answer)
        channel.shutdown(socket.SHUT_WR)
    except OSError:
        pass
