"""APIG triggers: HTTP routes to functions, on their own listener (default 127.0.0.1:8901).

The admin API can stay private while routes are public. A request matching
an ACTIVE route (NORMAL: the exact path; SWA: the path or anything below it;
the longest path wins) becomes FunctionGraph's APIG event, and the
function's `{statusCode, headers, body, isBase64Encoded}` result becomes the
HTTP response. A result of another shape, a status outside 200-599, a header
that is not valid HTTP, or a failed function, is a 502 with a message saying
what was wrong. Headers about the connection or the framing (Content-Length,
Transfer-Encoding, Connection, ...) are the server's: the function's are dropped, and so
are its copies of fgd's own (X-Cff-*, X-Request-Id, X-Is-Func-Err).
The node's admin token, if a caller sends it, is removed from the event.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import msgspec

from fgd.errors import FgdError, NotFound, Throttled, Unavailable
from fgd.invoker import Invoker, new_request_id
from fgd.metrics import Metrics
from fgd.model import Trigger
from fgd.store import Store
from fgd.triggers import trigger_ref
from fgd.versions import lookup, route
from fgd.web import auth
from fgd.web.connection import DirectHandler, Respond
from fgd.web.front import BodyBudget, Front, header_getter, read_body
from fgd.web.server import header_problem, lifespan

log = logging.getLogger("fgd.web.gateway")

MAX_BODY = 4 * 1024 * 1024
JSON = b"application/json"
_encoder = msgspec.json.Encoder()


class ApigResponse(msgspec.Struct, forbid_unknown_fields=False):
    statusCode: int  # noqa: N815 - FunctionGraph's field names
    body: str = ""
    headers: dict[str, str | list[str]] = {}
    isBase64Encoded: bool = False  # noqa: N815


def matches(trigger: Trigger, path: str, method: str) -> bool:
    data = trigger.event_data
    if data.get("req_method", "ANY") not in ("ANY", method):
        return False
    route = data["path"]
    if data.get("match_mode", "SWA") == "NORMAL":
        return path == route
    return path == route or path.startswith(route.rstrip("/") + "/")


def route_for(store: Store, path: str, method: str) -> Trigger | None:
    candidates = [
        t
        for t in store.triggers.values()
        if t.trigger_type_code == "APIG" and t.trigger_status == "ACTIVE" and matches(t, path, method)
    ]
    return max(candidates, key=lambda t: len(t.event_data["path"]), default=None)


def carries_token(name: bytes, value: bytes, token: str) -> bool:
    """Whether this request header presents the node's admin token (X-Auth-Token or a Bearer)."""
    if name == b"x-auth-token":
        presented = value.strip()
    elif name == b"authorization":
        scheme, _, presented = value.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        presented = presented.strip()
    else:
        return False
    return hmac.compare_digest(presented, token.encode())


def apig_event(scope: dict, body: bytes, trigger: Trigger, request_id: str, token: str) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        if carries_token(name, value, token):
            # The node's admin token authenticates the caller to fgd; the function never sees it.
            continue
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(scope.get("query_string", b"").decode()).items()}
    return {
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
        "httpMethod": scope["method"],
        "path": scope["path"],
        "headers": headers,
        "queryStringParameters": query,
        "pathParameters": {},
        "requestContext": {"apiId": trigger.trigger_id, "requestId": request_id, "stage": "RELEASE"},
    }


def as_it_came(scope: dict, token: str) -> dict[str, Any]:
    """Issue 13: what an HTTP function's request needs beyond the APIG event to reach its server as
    it came: the path and query string untouched and every header with all its values (runtimes/custom/http.py)."""
    headers: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        if not carries_token(name, value, token):
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return {
        # The path as sent, percent-encoding kept: the decoded `path` turns %2F into a separator
        # and %20 into a space no HTTP request line may hold.
        "rawPath": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        "rawQueryString": scope.get("query_string", b"").decode("latin-1"),
        "multiValueHeaders": headers,
    }


# Headers about this hop or the message's framing: fgd's HTTP server sets these itself, and a
# function's copy would contradict it (a wrong Content-Length desynchronises the connection).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length"})


# fgd's own answer headers (FunctionGraph's X-Cff-*, X-Request-Id, and the Date the server sets
# on every answer): the gateway sets those it sends, and a function's copy would stand beside
# them (a forged request id, a fake summary, a second Date from an HTTP function's server).
OWN_PREFIX = "x-cff-"
OWN = frozenset({"x-request-id", "x-is-func-err", "date"})


def _dropped(name: str, connection_tokens: set[str]) -> bool:
    return (
        name in HOP_BY_HOP
        or name.startswith("proxy-")
        or name in connection_tokens
        or name in OWN
        or name.startswith(OWN_PREFIX)
    )


def to_http(result: bytes | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The function's APIG response as HTTP, or ValueError saying why it is not one."""
    try:
        answer = msgspec.json.decode(result or b"null", type=ApigResponse)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"the function's result is not an APIG response ({{statusCode, headers, body}}): {exc}"
        ) from None
    except RecursionError:
        raise ValueError("the function's result is JSON nested too deeply") from None
    try:
        body = base64.b64decode(answer.body, validate=True) if answer.isBase64Encoded else answer.body.encode()
    except (binascii.Error, ValueError):
        raise ValueError("the function said isBase64Encoded but its body is not base64") from None
    items = [
        (name.lower(), str(item))
        for name, value in answer.headers.items()
        for item in (value if isinstance(value, list) else [value])
    ]
    return http_parts(answer.statusCode, items, body)


def http_parts(status: int, items: list[tuple[str, str]], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A status, headers and body as the gateway sends them, or ValueError saying why it cannot."""
    # 1xx are not final answers (101 would switch the connection to another protocol).
    if not 200 <= status <= 599:
        raise ValueError(f"the function's statusCode {status} is not a final HTTP status (200-599)")
    items = [(name.lower(), value) for name, value in items]
    connection_tokens = {
        token.strip() for name, value in items if name == "connection" for token in value.lower().split(",")
    }
    headers = []
    for name, value in items:
        if _dropped(name, connection_tokens):
            continue
        # A value's edge spaces and tabs are not part of it (RFC 9110 5.5), and HTTP cannot send
        # them: trimmed, as a proxy would (sent as they were, the whole answer was a 500).
        encoded = (name.encode("latin-1", "replace"), value.strip(" \t").encode("latin-1", "replace"))
        problem = header_problem(*encoded)
        if problem is not None:
            raise ValueError(f"the function's response header is refused: {problem}")
        headers.append(encoded)
    if status in (204, 304):
        body = b""  # these statuses have no body, and no Content-Length describes one
    return status, headers, body


def build_gateway(
    store: Store, invoker: Invoker, token: str, metrics: Metrics, bodies: BodyBudget | None = None
) -> Front:
    async def respond(send: Callable, status: int, headers: list, body: bytes) -> None:
        if status not in (204, 304):
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def error(send: Callable, status: int, code: str, message: str) -> None:
        await respond(
            send, status, [(b"content-type", JSON)], _encoder.encode({"error_code": code, "error_msg": message})
        )

    async def gateway(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        await serve(scope, receive, send, route_for(store, scope["path"], scope["method"]))

    def direct(method: str, path: str) -> DirectHandler | None:
        trigger = route_for(store, path, method)
        if trigger is None:
            return None  # the 404, through ASGI as before
        return functools.partial(serve_directly, method, trigger)

    async def serve_directly(
        method: str,
        trigger: Trigger,
        path: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        respond_directly: Respond,
    ) -> None:
        """A trigger route's request that came whole (fgd.web.connection's direct routes, a plain
        request mostly): the same `serve`, given its body at once, its answer written whole as
        it is sent (so a response held for a client that does not read it stays counted)."""
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": headers,
        }
        start: dict = {}
        given = False

        async def receive() -> dict:
            nonlocal given
            if given:
                return {"type": "http.disconnect"}
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                await respond_directly(start["status"], list(start.get("headers", ())), message.get("body", b""))

        await serve(scope, receive, send, trigger)

    async def serve(scope: dict, receive: Callable, send: Callable, trigger: Trigger | None) -> None:
        try:
            if trigger is None:
                raise NotFound(f"no route for {scope['method']} {scope['path']}")
            try:
                # The route's version or alias, resolved now: an alias's weights or header rules
                # pick the version this request runs (fgd.versions).
                record = route(store, lookup(store, trigger_ref(trigger)), header_getter(dict(scope["headers"])))
            except NotFound:
                raise NotFound(f"the function behind {scope['path']} no longer exists") from None
            if trigger.event_data.get("auth", "NONE") == "TOKEN":
                auth.check_asgi(token, dict(scope["headers"]))
            body = await read_body(
                receive, dict(scope["headers"]).get(b"content-length"), MAX_BODY, "the request body", bodies
            )
            request_id = new_request_id()
            fields = apig_event(scope, body, trigger, request_id, token)
            if record.runtime == "http":
                fields.update(as_it_came(scope, token))
            event = _encoder.encode(fields)
            try:
                outcome = await invoker.invoke(record, event, request_id)
            except (Throttled, Unavailable) as refusal:
                # Counted as on the API (fgd_throttles_total, the statistics' reject_count).
                metrics.refused(record.key, "capacity" if isinstance(refusal, Unavailable) else "throttled")
                raise
            metrics.invoked(record.key, outcome)
        except FgdError as refusal:
            await error(send, refusal.status, refusal.code, refusal.message)
            return
        if outcome.error is not None:
            await error(
                send, 502, "FSS.0502", f"the function failed: {outcome.error.error_type}: {outcome.error.error_message}"
            )
            return
        try:
            if outcome.http_response is not None:
                # Issue 13: an HTTP function's server answered: sent on as it came.
                status, headers, body = http_parts(*outcome.http_response)
            else:
                status, headers, body = to_http(outcome.body)
        except ValueError as exc:
            await error(send, 502, "FSS.0502", str(exc))
            return
        if bodies is None:
            await respond(send, status, [*headers, (b"x-cff-request-id", request_id.encode())], body)
            return
        # A response waits in memory while the client reads it (send_timeout at most): counted in
        # the listener's max_body_memory like a request body, so clients that read nothing cannot
        # hold a response each (100 such clients of a 3 MB route held 650 MB).
        try:
            bodies.take(len(body), "the request")
        except FgdError as refusal:
            await error(send, refusal.status, refusal.code, refusal.message)
            return
        try:
            await respond(send, status, [*headers, (b"x-cff-request-id", request_id.encode())], body)
        finally:
            bodies.used -= len(body)

    return Front(gateway, direct)
