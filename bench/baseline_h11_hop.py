"""A third baseline for invoke benchmarks: the trio + h11 echo server (bench/baseline_h11.py)
with one hop to a worker process per connection, which echoes the body back.

The floor of any design that runs the function in a process of its own, as fgd must: the
server parses and frames as the bare echo does, and each request also crosses a socketpair to
another process and back (length-prefixed frames, no codec, no sandbox, no bookkeeping).

Usage: python bench/baseline_h11_hop.py PORT
"""

from __future__ import annotations

import functools
import os
import socket
import struct
import sys

import baseline_h11
import trio

MAX_RECV = 64 * 1024
HEADER = struct.Struct(">I")


def worker(sock: socket.socket) -> None:
    """The other process: read a frame, send it back, until the server closes its end."""
    buffer = b""
    while True:
        while len(buffer) < HEADER.size or len(buffer) < HEADER.size + HEADER.unpack_from(buffer)[0]:
            data = sock.recv(MAX_RECV)
            if not data:
                os._exit(0)
            buffer += data
        size = HEADER.size + HEADER.unpack_from(buffer)[0]
        sock.sendall(buffer[:size])
        buffer = buffer[size:]


def start_worker() -> trio.socket.SocketType:
    ours, theirs = socket.socketpair()
    if os.fork() == 0:
        # Nothing of the server's but its own end: not the listener, not the other workers'
        # sockets (each must see its end close with the server), not the runner's stdio.
        keep = theirs.fileno()
        os.closerange(0, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        worker(theirs)
    theirs.close()
    return trio.socket.from_stdlib_socket(ours)


async def hop(sock: trio.socket.SocketType, body: bytes) -> bytes:
    await sock.send(HEADER.pack(len(body)) + body)
    answer = b""
    while len(answer) < HEADER.size or len(answer) < HEADER.size + HEADER.unpack_from(answer)[0]:
        answer += await sock.recv(MAX_RECV)
    return answer[HEADER.size :]


async def serve(stream: trio.SocketStream) -> None:
    """bench/baseline_h11.py's connection, each body answered by this connection's worker."""
    instance = start_worker()
    try:
        await baseline_h11.serve(stream, functools.partial(hop, instance))
    finally:
        instance.close()


def main() -> None:
    trio.run(functools.partial(trio.serve_tcp, serve, int(sys.argv[1]), host="127.0.0.1"))


if __name__ == "__main__":
    main()
