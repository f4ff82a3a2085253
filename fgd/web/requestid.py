"""X-Request-Id on every answer of a listener (the API and the gateway, errors included).

A fresh id per request; an invocation's answer carries its X-Cff-Request-Id under both
names, so a caller can quote either. A function behind an APIG route cannot set its own
X-Request-Id: the gateway's id replaces it (two would leave the caller guessing). Answers
hypercorn gives without asking the app (a request it cannot parse) have none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fgd.invoker import new_request_id

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

REQUEST_ID = b"x-request-id"
CFF_REQUEST_ID = b"x-cff-request-id"


def stamped(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with one X-Request-Id: the X-Cff-Request-Id if there is one, else a new id."""
    kept = []
    request_id = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == REQUEST_ID:
            continue
        if lowered == CFF_REQUEST_ID:
            request_id = value
        kept.append((name, value))
    kept.append((REQUEST_ID, request_id or new_request_id().encode()))
    return kept


def with_request_ids(app: ASGIApp) -> ASGIApp:
    async def app_with_ids(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_stamped(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": stamped(list(message.get("headers", ())))}
            await send(message)

        await app(scope, receive, send_stamped)

    return app_with_ids
