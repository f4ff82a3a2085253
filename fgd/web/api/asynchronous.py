"""A function's asynchronous invocation settings: event age, retries, destinations."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from fgd.model import AsyncConfigAnswer, AsyncInvokeConfig
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    route,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(app, "GET", f"{BASE}/functions/<urn>/async-invoke-config", answer=AsyncConfigAnswer)
    async def get_async_invoke_config(project_id: str, urn: str) -> AsyncConfigAnswer:
        return ctx.functions.async_config(ctx.lookup(project_id, urn))

    @route(app, "PUT", f"{BASE}/functions/<urn>/async-invoke-config", body=AsyncInvokeConfig, answer=AsyncConfigAnswer)
    async def put_async_invoke_config(project_id: str, urn: str) -> AsyncConfigAnswer:
        record = await ctx.functions.set_async_config(ctx.lookup(project_id, urn), await body_json())
        return ctx.functions.async_config(record)

    @route(app, "DELETE", f"{BASE}/functions/<urn>/async-invoke-config", status=204)
    async def delete_async_invoke_config(project_id: str, urn: str) -> Response:
        await ctx.functions.set_async_config(ctx.lookup(project_id, urn), {})
        return Response(b"", status=204)
