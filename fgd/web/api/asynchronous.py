"""A function's asynchronous invocation settings: event age, retries, destinations."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from fgd.model import AsyncConfigAnswer, AsyncInvokeConfig, FunctionRef
from fgd.versions import lookup
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
        # FunctionGraph lists one config per version or alias: latest's, each version's and each
        # alias's own (fgd.versions), those that were set (not the defaults).
        record = ctx.lookup(project_id, urn)
        at = window("limit", CONFIGS_DEFAULT, CONFIGS_MAX)
        versions = ctx.functions.versions
        candidates = versions.list(record.key) + [
            lookup(ctx.store, FunctionRef(*record.key, f"!{a.name}"))
            for a in versions.aliases(record.key)
            if a.async_modified
        ]
        configs = [ctx.functions.async_config(r) for r in candidates if r.async_config != AsyncInvokeConfig()]
        return paged(configs, "async_invoke_configs", at)
