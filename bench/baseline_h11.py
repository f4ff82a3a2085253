"""The second baseline for invoke benchmarks: a bare echo server on trio and h11, nothing else.

The floor for an HTTP/1.1 server in Python on this stack (fgd's listeners use the same
two libraries): one task per connection, h11 parses and frames, the body is echoed.

Usage: python bench/baseline_h11.py PORT
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable

import h11
import trio

MAX_RECV = 64 * 1024


async def serve(stream: trio.SocketStream, answer: Callable[[bytes], Awaitable[bytes]] | None = None) -> None:
    """One connection: each request's body is echoed, or what `answer` makes of it."""
    conn = h11.Connection(h11.SERVER)
    body = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(MAX_RECV))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if answer is not None:
                    body = await answer(body)
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=headers))
                    + conn.send(h11.Data(data=body))
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
        await stream.aclose()


def main() -> None:
    trio.run(functools.partial(trio.serve_tcp, serve, int(sys.argv[1]), host="127.0.0.1"))


if __name__ == "__main__":
    main()
