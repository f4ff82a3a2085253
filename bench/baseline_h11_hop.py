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

import h11
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
        ours.close()
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
    conn = h11.Connection(h11.SERVER)
    body = b""
    instance = start_worker()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(MAX_RECV))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                answer = await hop(instance, body)
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=headers))
                    + conn.send(h11.Data(data=answer))
                    + conn.send(h11.EndOfMessage())
                )
                body = b""
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        instance.close()
        await stream.aclose()


def main() -> None:
    trio.run(functools.partial(trio.serve_tcp, serve, int(sys.argv[1]), host="127.0.0.1"))


if __name__ == "__main__":
    main()
