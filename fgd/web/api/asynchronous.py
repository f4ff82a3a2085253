"""A function's asynchronous invocation settings: event age, retries, destinations."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from fgd.model import AsyncConfigAnswer, AsyncInvokeConfig
from fgd.web.api.answers import AsyncInvokeConfigList, LimitQuery
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    paged,
    route,
    window,
)

# ListFunctionAsyncInvokeConfig's page size: none or 0 means 10, more than 100 means 100.
CONFIGS_DEFAULT = 10
CONFIGS_MAX = 100


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

    @route(app, "GET", f"{BASE}/functions/<urn>/async-invoke-configs", query=LimitQuery, answer=AsyncInvokeConfigList)
    async def list_async_invoke_configs(project_id: str, urn: str) -> AsyncInvokeConfigList:
        # FunctionGraph lists one config per version or alias; fgd functions have one version
        # (latest), so the list holds its config if one was set (not the defaults), else nothing.
        record = ctx.lookup(project_id, urn)
        at = window("limit", CONFIGS_DEFAULT, CONFIGS_MAX)
        configs = [ctx.functions.async_config(record)] if record.async_config != AsyncInvokeConfig() else []
        return paged(configs, "async_invoke_configs", at)
