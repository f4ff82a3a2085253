"""Asynchronous invocations: enqueue, list, cancel. (Sync invocations are served by fgd.web.front.)"""

from __future__ import annotations

import time
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from fgd.asyncqueue import AsyncEvent, invocation_answer
from fgd.config import AsyncConfig
from fgd.dispatch import Dispatcher
from fgd.errors import Conflict, InvalidParameter, NotFound, Throttled, TooLarge
from fgd.invoker import check_event, new_request_id
from fgd.model import AsyncInvocationList, FunctionRecord
from fgd.store import Store
from fgd.versions import route as version_route
from fgd.web.api.answers import AsyncAccepted, AsyncAnswerHeaders, AsyncInvocationsQuery, CancelBody, Cancelled
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    int_arg,
    json_response,
    route,
)


def async_event(
    store: Store, dispatcher: Dispatcher, config: AsyncConfig, record: FunctionRecord, data: bytes
) -> AsyncEvent:
    """The event an async invocation of `record` with body `data` queues, or the error refusing it.

    Shared by this route and fgd.web.front, which serves it on the hot path (without Quart).
    """
    if record.runtime == "http":
        # Issue 13: as on FunctionGraph, an HTTP function answers requests; nobody would get its answer.
        raise InvalidParameter(
            "HTTP functions (runtime http) cannot be invoked asynchronously; invoke them synchronously"
        )
    if len(data) > config.max_payload:
        raise TooLarge(f"the event is {len(data):,} bytes; asynchronous events may be {config.max_payload:,} at most")
    if dispatcher.full():
        raise Throttled(
            f"the node has {config.max_queued:,} asynchronous invocations waiting or running, "
            "its limit; send this one again later"
        )
    # The version is chosen now (an alias's weights; header rules are for sync and HTTP
    # requests) and kept with the event: a retry runs the same one (fgd.versions).
    record = version_route(store, record)
    return AsyncEvent.new(record.key, new_request_id(), check_event(data), record.version, record.alias)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(
        app,
        "POST",
        f"{BASE}/functions/<urn>/invocations-async",
        body=Any,
        body_optional=True,
        answer=AsyncAccepted,
        answer_headers=AsyncAnswerHeaders,
        status=202,
        errors=(413, 429),
    )
    async def invoke_async(project_id: str, urn: str) -> Response:
        # fgd.web.front serves this route on the hot path (without Quart); both use async_event.
        record = ctx.lookup(project_id, urn)
        event = async_event(ctx.store, ctx.dispatcher, ctx.async_config, record, await request.get_data())
        # Durable before we answer: 202 means it will run (at least once). Invocations arriving
        # together share one transaction (fgd.groupcommit); none is answered before it commits.
        await ctx.dispatcher.enqueue(event)
        response = json_response(AsyncAccepted(request_id=event.request_id), 202)
        # As on a sync invocation: the answer's X-Request-Id (fgd.web.requestid) is the event's id.
        response.headers["X-Cff-Request-Id"] = event.request_id
        return response

    @route(
        app, "GET", f"{BASE}/functions/<urn>/async-invocations", query=AsyncInvocationsQuery, answer=AsyncInvocationList
    )
    async def list_async(project_id: str, urn: str) -> AsyncInvocationList:
        record = ctx.lookup(project_id, urn)
        status = request.args.get("status") or None
        if status is not None and status not in ("WAIT", "RUNNING", "SUCCESS", "FAIL", "DISCARD"):
            raise InvalidParameter("status must be one of WAIT, RUNNING, SUCCESS, FAIL, DISCARD")
        limit = int_arg("limit", 100, 1, 1000)
        events = await ctx.store.run(
            ctx.store.queue.find, record.key, request.args.get("request_id") or None, status, limit
        )
        rows = [invocation_answer(e) for e in events]
        return AsyncInvocationList(invocations=rows, count=len(rows))

    @route(app, "POST", f"{BASE}/functions/<urn>/cancel", body=CancelBody, answer=Cancelled, errors=(409,))
    async def cancel_async(project_id: str, urn: str) -> Cancelled:
        record = ctx.lookup(project_id, urn)
        body = await body_json()
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise InvalidParameter('the body must be {"request_id": "<id of a waiting asynchronous invocation>"}')
        if await ctx.store.run(ctx.store.queue.cancel, record.key, request_id, time.time()):
            return Cancelled(request_id=request_id, status="DISCARD")
        found = await ctx.store.run(ctx.store.queue.find, record.key, request_id, None, 1)
        if not found:
            raise NotFound(f"no asynchronous invocation {request_id} of {record.func_name}")
        raise Conflict(f"invocation {request_id} is {found[0].status}; only a waiting one (WAIT) can be cancelled")
