"""The first baseline for invoke benchmarks: a bare ASGI echo app on hypercorn's trio worker
(the HTTP server fgd's listeners ran on before issue 15).

Usage: python bench/baseline_app.py PORT
"""

from __future__ import annotations

import sys

import hypercorn.config
import hypercorn.trio
import trio


async def echo(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{sys.argv[1]}"]
    config.accesslog = None
    trio.run(hypercorn.trio.serve, echo, config)


if __name__ == "__main__":
    main()
