"""The raw-ASGI front: the invoke route served without Quart, the rest passed on.

Invocation is the hot path; going through Quart costs about a third more CPU
per request than bare ASGI, so this handler parses only what it needs.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from fgd.config import AsyncConfig
from fgd.dependencies import Dependencies
from fgd.dispatch import Dispatcher
from fgd.errors import (
    FgdError,
    InternalError,
    InvalidInstanceMemory,
    InvalidParameter,
    Throttled,
    TooLarge,
    Unavailable,
)
from fgd.functions import Functions
from fgd.invoker import Invoker, Outcome, new_request_id
from fgd.logs import billed_ms, tail
from fgd.metrics import Metrics
from fgd.model import check_project, parse_function_ref
from fgd.versions import route
from fgd.web import auth
from fgd.web.api.answers import AsyncAccepted, InvokeAnswerHeaders, InvokeHeaders
from fgd.web.api.common import BASE, Operation, path_regex
from fgd.web.api.invocations import async_event
from fgd.web.connection import DirectHandler, Respond
from fgd.web.server import header_text
from fgd.web.uploads import is_raw_zip, raw_limit, receive_to_file
from runtimes import protocol

log = logging.getLogger("fgd.web.front")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# The sync invoke route, served here only: declared for the OpenAPI document (fgd.web.openapi).
INVOKE = Operation(
    method="POST",
    path=f"{BASE}/functions/<urn>/invocations",
    name="invoke_function",
    summary="invoke a function synchronously: the answer is the function's result",
    tag="invocations",
    body=Any,
    body_optional=True,
    headers=InvokeHeaders,
    answer_headers=InvokeAnswerHeaders,
    # The function's result: JSON of what it returned, but a string it returns is the body as it
    # is (FunctionGraph's rule, runtimes/python/instance.py), under the same Content-Type:
    # application/json. Any media type is the honest description.
    answer=Any,
    content_type="*/*",
    errors=(413, 429, 503),
)
OPERATIONS = (INVOKE,)
INVOKE_PATH = path_regex(INVOKE.path)
# Raw zip uploads to these routes are streamed here; the routes are declared (raw_zip=...) in
# fgd.web.api.functions and fgd.web.api.dependencies, which serve their JSON form.
CODE_PATH = path_regex(f"{BASE}/functions/<urn>/code")
DEPENDENCY_PATH = path_regex(f"{BASE}/dependencies/version")
# Async invocations are queued here too (issue 15: Quart cost more than the rest of the path);
# the route is declared in fgd.web.api.invocations, which shares the checks (async_event).
ASYNC_PATH = path_regex(f"{BASE}/functions/<urn>/invocations-async")
MAX_EVENT_BYTES = protocol.MAX_PAYLOAD
CODE_FILENAME_MAX = 128
JSON = b"application/json"

_encoder = msgspec.json.Encoder()


class Summary(msgspec.Struct, omit_defaults=True, kw_only=True):
    duration: float
    billingDuration: int  # noqa: N815 - FunctionGraph's header field names
    memorySize: int  # noqa: N815
    memoryUsed: float  # noqa: N815
    coldStart: bool  # noqa: N815
    initDuration: float | None = None  # noqa: N815
    # fgd: which version ran (always given), and the alias it was reached through (fgd.versions).
    version: str
    alias: str = ""
    # fgd (issue 12): the interpreter that ran the invocation ({"path", "version"}).
    runtime_interpreter: dict | None = None


class ErrorPayload(msgspec.Struct):
    errorMessage: str  # noqa: N815
    errorType: str  # noqa: N815
    stackTrace: list[str]  # noqa: N815


class V1Body(msgspec.Struct):
    request_id: str
    result: str
    log: str
    status: int


def _headers(scope: dict) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def header_getter(headers: dict[bytes, bytes]):
    """A request's headers as an alias's header rules read them (names lower-case)."""

    def get(name: str) -> str | None:
        value = headers.get(name.encode("latin-1", "replace"))
        return None if value is None else value.decode("latin-1")

    return get


class BodyBudget:
    """Bytes of bodies one listener holds in memory while they arrive, or (gateway responses)
    while they are sent (max_body_memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int, what: str) -> None:
        if self.used + size > self.limit:
            raise Unavailable(
                f"the node holds {self.limit:,} bytes of request bodies still arriving, its limit; "
                f"send {what} again shortly, and at once"
            )
        self.used += size


async def read_body(
    receive: Callable[[], Awaitable[dict]],
    declared: bytes | None,
    limit: int = MAX_EVENT_BYTES,
    what: str = "the event",
    budget: BodyBudget | None = None,
) -> bytes:
    """The whole request body, refusing (413) anything over `limit` as soon as it shows, and
    (503) any piece that would take the listener over its `budget` of bodies in memory."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"{what} is {int(declared):,} bytes; the limit is {limit:,}")
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # A body cut short is not the request the client meant: never act on it.
                raise InvalidParameter(f"the client went away before {what} was complete")
            chunk = message.get("body", b"")
            if size + len(chunk) > limit:
                raise TooLarge(f"{what} is over {limit:,} bytes, the limit")
            if budget is not None:
                budget.take(len(chunk), what)
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        # Counted while it arrives only: once whole it is the invocation's (bounded by its slots).
        if budget is not None:
            budget.used -= size


def whole_body(
    body: bytes, limit: int = MAX_EVENT_BYTES, what: str = "the event", budget: BodyBudget | None = None
) -> bytes:
    """`read_body` for a body that arrived whole with its head: the same refusals."""
    if len(body) > limit:
        raise TooLarge(f"{what} is over {limit:,} bytes, the limit")
    if budget is not None:
        budget.take(len(body), what)
        budget.used -= len(body)
    return body


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
# An invoke route's answer from the request's path, query, headers, a reader of its body (given
# its Content-Length), project and function (`invoke_answer`, `async_answer` in build_front).
AnswerOf = Callable[
    [str, bytes, list[tuple[bytes, bytes]], Callable[[bytes | None], Awaitable[bytes]], str, str], Awaitable[Answer]
]


def _answer(status: int, headers: list, body: bytes) -> Answer:
    headers.append((b"content-length", str(len(body)).encode()))
    return status, headers, body


def _error_answer(error: FgdError) -> Answer:
    return _answer(error.status, [(b"content-type", JSON)], _encoder.encode(error.body()))


async def _send_answer(send: Callable[[dict], Awaitable[None]], answer: Answer) -> None:
    """An answer as the two ASGI messages."""
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond(send: Callable[[dict], Awaitable[None]], status: int, headers: list, body: bytes) -> None:
    await _send_answer(send, _answer(status, headers, body))


def _outcome_headers(outcome: Outcome, log_tail: bool) -> list[tuple[bytes, bytes]]:
    summary = Summary(
        duration=round(outcome.duration_ms, 3),
        billingDuration=billed_ms(outcome.duration_ms),
        memorySize=outcome.memory_size,
        memoryUsed=round(outcome.max_memory_mb, 3),
        coldStart=outcome.cold,
        initDuration=round(outcome.init_ms, 3) if outcome.cold and outcome.init_ms is not None else None,
        version=outcome.version,
        alias=outcome.alias,
        runtime_interpreter=outcome.runtime_interpreter,
    )
    headers = [
        (b"content-type", JSON),
        (b"x-cff-request-id", outcome.request_id.encode()),
        (b"x-cff-invoke-summary", _encoder.encode(summary)),
        (b"x-is-func-err", b"true" if outcome.error else b"false"),
    ]
    if outcome.error:
        # The function chooses its error type (any exception class name); in a header it is
        # printable ASCII only, CR and LF included as '?', and no space at its edges (a value with
        # edge whitespace is not valid HTTP: the answer would be a 500). The body carries it unchanged.
        headers.append((b"x-func-err-code", header_text(outcome.error.error_type).strip(b" ")))
    if log_tail:
        headers.append((b"x-cff-function-log", base64.b64encode(tail(outcome.logs))))
    return headers


def _outcome_body(outcome: Outcome, version: bytes) -> bytes:
    if outcome.error:
        error = outcome.error
        payload = _encoder.encode(ErrorPayload(error.error_message, error.error_type, error.stack_trace))
    else:
        payload = outcome.body if outcome.body is not None else b"null"
    if version != b"v1":
        return payload
    return _encoder.encode(
        V1Body(
            request_id=outcome.request_id,
            result=payload.decode(errors="replace"),
            log="".join(f"{line.message}\n" for line in outcome.logs),
            status=500 if outcome.error else 200,
        )
    )


def instance_memory(header: bytes | None, enabled: bool) -> int | None:
    """The memory size a request asks for with X-Cff-Instance-Memory, checked."""
    if header is None:
        return None
    if not enabled:
        raise InvalidInstanceMemory(
            "X-Cff-Instance-Memory needs dynamic memory: set enable_dynamic_memory in the function's config"
        )
    text = header.decode(errors="replace").strip()
    # ASCII digits only: str.isdigit also accepts '²', which int() refuses.
    if not (text.isascii() and text.isdigit()) or not 64 <= int(text) <= 10240:
        raise InvalidInstanceMemory(f"X-Cff-Instance-Memory must be a memory size in MB from 64 to 10240, not {text!r}")
    return int(text)


class Inflight:
    """Counts HTTP requests being served, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        # Made when shutdown waits, set when the count reaches 0 (not an event per request).
        self._idle: trio.Event | None = None

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def drained(self) -> None:
        if self.count:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()

    def wrap(self, app: Front) -> Front:
        """Count the requests of another app too (the gateway), so shutdown waits for them: those
        through ASGI and those its direct routes answer."""

        async def counted(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            with self:
                await app(scope, receive, send)

        def direct(method: str, path: str) -> DirectHandler | None:
            handler = app.direct(method, path)
            if handler is None:
                return None

            async def counted_directly(*request: Any) -> None:
                with self:
                    await handler(*request)

            return counted_directly

        return Front(counted, direct)


async def _body_chunks(receive: Callable[[], Awaitable[dict]]) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidParameter("the client went away before the upload finished")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def signed_body(
    admission: auth.Admission, read: Callable[[bytes | None], Awaitable[bytes]], headers: dict[bytes, bytes]
) -> bytes:
    """A signed request's body, read whole and its signature checked (Unauthorized if it fails)."""
    body = await read(headers.get(b"content-length"))
    admission.update(body)
    admission.finish()
    return body


def _admit(admission: auth.Admission, path: Path) -> None:
    """Finish a streamed upload's signature check; a refused upload's staging file goes."""
    try:
        admission.finish()
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def build_front(
    api: ASGIApp,
    functions: Functions,
    dependencies: Dependencies,
    invoker: Invoker,
    authenticator: auth.Authenticator,
    inflight: Inflight,
    metrics: Metrics,
    bodies: BodyBudget | None = None,
    dispatcher: Dispatcher | None = None,
    async_config: AsyncConfig | None = None,
) -> Front:
    code = functions.packager.code

    async def upload(scope: dict, receive: Callable, send: Callable, match: re.Match) -> None:
        """A raw application/zip body, streamed to disk (Quart would hold it all in memory)."""
        headers = _headers(scope)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(scope.get("query_string", b"").decode()).items()}
        try:
            # A signed upload is hashed as it streams in and refused before anything is stored.
            admission = authenticator.start_asgi(scope)
            project_id = match[1]
            check_project(project_id)
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > raw_limit(code):
                raise TooLarge(f"the zip is {int(declared):,} bytes; the limit is {raw_limit(code):,}")
            if match.re is CODE_PATH:
                # A signed upload is checked whole before the function is looked up (a wrong
                # signature learns nothing of which functions exist); the admin token's is refused
                # from its head when it can be, before the body comes.
                staged = None
                if admission.signed:
                    staged = await receive_to_file(admission.hashing(_body_chunks(receive)), code)
                    _admit(admission, staged)
                try:
                    record = functions.get(parse_function_ref(project_id, match[2], functions.region))
                    # A published version's code never changes.
                    functions.latest_only(record, "the code")
                    if len(query.get("code_filename", "")) > CODE_FILENAME_MAX:
                        # The JSON form's limit (UpdateCode.code_filename).
                        raise InvalidParameter(f"code_filename may be {CODE_FILENAME_MAX} characters at most")
                except BaseException:
                    if staged is not None:
                        staged.unlink(missing_ok=True)
                    raise
                path = staged
                if path is None:
                    path = await receive_to_file(admission.hashing(_body_chunks(receive)), code)
                    _admit(admission, path)
                record = await functions.update_code_file(record, path, query.get("code_filename", ""))
                answer: Any = functions.config(record)
            else:
                fields = {k: query[k] for k in ("name", "runtime", "description") if k in query}
                path = await receive_to_file(admission.hashing(_body_chunks(receive)), code)
                _admit(admission, path)
                answer = dependencies.info(await dependencies.create(project_id, fields, path))
        except FgdError as error:
            await _respond(send, error.status, [(b"content-type", JSON)], _encoder.encode(error.body()))
            return
        await _respond(send, 200, [(b"content-type", JSON)], _encoder.encode(answer))

    async def invoke_answer(
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        event: Callable[[bytes | None], Awaitable[bytes]],
        project_id: str,
        urn: str,
    ) -> Answer:
        """A sync invocation's answer; `event` reads the body (given its Content-Length)."""
        named = dict(headers)
        record = None
        try:
            admission = authenticator.start("POST", path, query, headers)
            # A signature covers the event too: a signed request is checked whole before anything is
            # looked up (else a wrong signature could learn which functions exist: 404 against 401).
            body = await signed_body(admission, event, named) if admission.signed else None
            check_project(project_id)
            record = functions.get(parse_function_ref(project_id, urn, functions.region))
            # An alias's weights or header rules pick the version this request runs (fgd.versions).
            record = route(functions.store, record, header_getter(named))
            if body is None:
                body = await event(named.get(b"content-length"))
            memory = instance_memory(named.get(b"x-cff-instance-memory"), record.settings.enable_dynamic_memory)
            try:
                outcome = await invoker.invoke(record, body, new_request_id(), memory)
            except (Throttled, Unavailable) as refusal:
                metrics.refused(record.key, "capacity" if isinstance(refusal, Unavailable) else "throttled")
                raise
            metrics.invoked(record.key, outcome)
        except FgdError as error:
            return _error_answer(error)
        except Exception:
            log.exception("unexpected error invoking %s", urn)
            if record is not None:
                metrics.system_error(record.key)
            return _error_answer(InternalError("internal error while invoking the function; see the daemon's log"))
        log_tail = named.get(b"x-cff-log-type", b"").lower() == b"tail"
        version = named.get(b"x-cff-request-version", b"v0").lower()
        return _answer(200, _outcome_headers(outcome, log_tail), _outcome_body(outcome, version))

    async def async_answer(
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        read: Callable[[bytes | None], Awaitable[bytes]],
        project_id: str,
        urn: str,
    ) -> Answer:
        """An async invocation's answer: 202 once its event is on disk; `read` reads the body."""
        assert dispatcher is not None and async_config is not None
        named = dict(headers)
        try:
            admission = authenticator.start("POST", path, query, headers)
            # As for a sync invocation: a signed request is checked whole before any lookup.
            data = await signed_body(admission, read, named) if admission.signed else None
            check_project(project_id)
            record = functions.get(parse_function_ref(project_id, urn, functions.region))
            if data is None:
                data = await read(named.get(b"content-length"))
            event = async_event(functions.store, dispatcher, async_config, record, data)
            # Durable before we answer: 202 means it will run (at least once). Invocations arriving
            # together share one transaction (fgd.groupcommit); none is answered before it commits.
            await dispatcher.enqueue(event)
        except FgdError as error:
            return _error_answer(error)
        except Exception:
            log.exception("unexpected error queueing an invocation of %s", urn)
            return _error_answer(InternalError("internal error while queueing the invocation; see the daemon's log"))
        # As on a sync invocation: the answer's X-Request-Id (fgd.web.requestid) is the event's id.
        answer_headers = [(b"content-type", JSON), (b"x-cff-request-id", event.request_id.encode())]
        return _answer(202, answer_headers, _encoder.encode(AsyncAccepted(request_id=event.request_id)))

    def served_by_asgi(answer: AnswerOf, limit: int) -> Callable[..., Awaitable[None]]:
        """An invoke route through ASGI: its body read as it comes, refused past `limit`."""

        async def serve(scope: dict, receive: Callable, send: Callable, project_id: str, urn: str) -> None:
            async def read(declared: bytes | None) -> bytes:
                return await read_body(receive, declared, limit, "the event", bodies)

            await _send_answer(
                send, await answer(scope["path"], scope["query_string"], scope["headers"], read, project_id, urn)
            )

        return serve

    def served_directly(answer: AnswerOf, limit: int) -> Callable[..., Awaitable[None]]:
        """An invoke route for a request whose body came whole with its head (almost every one):
        answered without the ASGI messages (fgd.web.connection.DirectHandler), with the same checks."""

        async def serve(
            match: re.Match,
            path: str,
            raw_path: bytes,
            query: bytes,
            headers: list[tuple[bytes, bytes]],
            body: bytes,
            respond: Respond,
        ) -> None:
            async def read(declared: bytes | None) -> bytes:
                return whole_body(body, limit, "the event", bodies)

            # Counted until the answer is written, as on the ASGI route: shutdown waits for an answer
            # too large for the socket's buffers to be out (else it is cut when the listeners stop).
            with inflight:
                await respond(*await answer(path, query, headers, read, match[1], match[2]))

        return serve

    invoke = served_by_asgi(invoke_answer, MAX_EVENT_BYTES)
    invoke_direct = served_directly(invoke_answer, MAX_EVENT_BYTES)
    async_limit = async_config.max_payload if async_config is not None else MAX_EVENT_BYTES
    invoke_async = served_by_asgi(async_answer, async_limit)
    invoke_async_direct = served_directly(async_answer, async_limit)

    def direct(method: str, path: str) -> DirectHandler | None:
        if method != "POST":
            return None
        if (match := INVOKE_PATH.match(path)) is not None:
            return functools.partial(invoke_direct, match)
        if dispatcher is not None and (match := ASYNC_PATH.match(path)) is not None:
            return functools.partial(invoke_async_direct, match)
        return None

    async def front(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await api(scope, receive, send)
            return
        with inflight:
            path, method = scope["path"], scope["method"]
            if method == "POST":
                match = INVOKE_PATH.match(path)
                if match:
                    await invoke(scope, receive, send, match[1], match[2])
                    return
                match = ASYNC_PATH.match(path) if dispatcher is not None else None
                if match:
                    await invoke_async(scope, receive, send, match[1], match[2])
                    return
            if method in ("PUT", "POST") and is_raw_zip(_headers(scope).get(b"content-type", b"").decode("latin-1")):
                match = (CODE_PATH if method == "PUT" else DEPENDENCY_PATH).match(path)
                if match:
                    await upload(scope, receive, send, match)
                    return
            await api(scope, receive, send)

    return Front(front, direct)


class Front:
    """The API listener's app: ASGI for every route, and the sync and async invokes of a
    request that arrived whole also without it (`direct`, which fgd.web.connection asks first)."""

    def __init__(self, asgi: ASGIApp, direct: Callable[[str, str], DirectHandler | None]) -> None:
        self._asgi = asgi
        self.direct = direct

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        await self._asgi(scope, receive, send)
