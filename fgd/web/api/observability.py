"""Health, metrics and logs."""

from __future__ import annotations

import trio
from quart import Response, request
from quart_trio import QuartTrio

from fgd.web.api.answers import Health, LogLines, LogsQuery
from fgd.web.api.common import (
    BASE,
    ApiContext,
    bool_arg,
    encoder,
    float_arg,
    int_arg,
    json_response,
    route,
)

FOLLOW_POLL = 0.25
FOLLOW_MAX_SECONDS = 3600


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(app, "GET", "/metrics", answer=str, content_type="text/plain")
    async def prometheus() -> Response:
        return Response(ctx.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @route(app, "GET", "/healthz", answer=Health, alternatives={503: Health}, auth=False)
    async def healthz() -> Response:
        status = ctx.health()
        return json_response(status, 200 if status["status"] == "ok" else 503)

    @route(
        app,
        "GET",
        f"{BASE}/functions/<urn>/logs",
        query=LogsQuery,
        answer=LogLines,
        variants={"application/x-ndjson": str},
    )
    async def function_logs(project_id: str, urn: str) -> Response | LogLines:
        record = ctx.lookup(project_id, urn)
        request_id = request.args.get("request_id") or None
        since = float_arg("since")
        limit = int_arg("limit", 100, 1, 10000)
        follow = bool_arg("follow", False)

        async def read(after_id: int, count: int) -> list:
            await ctx.logs_flush()
            return await ctx.store.run(
                ctx.store.read_logs, record.key, request_id=request_id, since=since, after_id=after_id, limit=count
            )

        rows = await read(0, limit)
        if not follow:
            return LogLines(logs=[line for _, line in rows], count=len(rows))

        async def stream():
            last = rows[-1][0] if rows else 0
            for _, line in rows:
                yield encoder.encode(line) + b"\n"
            with trio.move_on_after(FOLLOW_MAX_SECONDS):
                while True:
                    await trio.sleep(FOLLOW_POLL)
                    for row_id, line in await read(last, 10000):
                        last = row_id
                        yield encoder.encode(line) + b"\n"

        response = Response(stream(), content_type="application/x-ndjson")
        response.timeout = None
        return response
