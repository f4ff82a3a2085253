"""A function's asynchronous invocation settings: event age, retries, destinations."""

from __future__ import annotations

import msgspec
from quart import Response
from quart_trio import QuartTrio

from fgd.model import AsyncInvokeConfig, FunctionRecord
from fgd.web.api.answers import FunctionAsyncConfig
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    route,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    def answer(record: FunctionRecord) -> FunctionAsyncConfig:
        return FunctionAsyncConfig(
            func_urn=ctx.functions.config(record).func_urn, **msgspec.structs.asdict(record.async_config)
        )

    @route(app, "GET", f"{BASE}/functions/<urn>/async-invoke-config", answer=FunctionAsyncConfig)
    async def get_async_invoke_config(project_id: str, urn: str) -> FunctionAsyncConfig:
        return answer(ctx.lookup(project_id, urn))

    @route(
        app, "PUT", f"{BASE}/functions/<urn>/async-invoke-config", body=AsyncInvokeConfig, answer=FunctionAsyncConfig
    )
    async def put_async_invoke_config(project_id: str, urn: str) -> FunctionAsyncConfig:
        record = ctx.lookup(project_id, urn)
        return answer(await ctx.functions.set_async_config(record, await body_json()))

    @route(app, "DELETE", f"{BASE}/functions/<urn>/async-invoke-config", status=204)
    async def delete_async_invoke_config(project_id: str, urn: str) -> Response:
        record = ctx.lookup(project_id, urn)
        await ctx.functions.set_async_config(record, {})
        return Response(b"", status=204)
