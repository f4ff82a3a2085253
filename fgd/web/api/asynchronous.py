"""A function's asynchronous invocation settings: event age, retries, destinations."""

from __future__ import annotations

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    json_response,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @app.route(f"{BASE}/functions/<urn>/async-invoke-config", methods=["GET", "PUT", "DELETE"])
    async def async_invoke_config(project_id: str, urn: str) -> Response:
        record = ctx.lookup(project_id, urn)
        if request.method == "PUT":
            record = await ctx.functions.set_async_config(record, await body_json())
        elif request.method == "DELETE":
            record = await ctx.functions.set_async_config(record, {})
            return Response(b"", status=204)
        return json_response(
            {"func_urn": ctx.functions.config(record).func_urn, **msgspec.to_builtins(record.async_config)}
        )
