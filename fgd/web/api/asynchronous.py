"""A function's asynchronous invocation settings: event age, retries, destinations."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from fgd.model import AsyncInvokeConfig, FunctionRef
from fgd.versions import lookup
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    json_response,
    paged,
    window,
)

# ListFunctionAsyncInvokeConfig's page size: none or 0 means 10, more than 100 means 100.
CONFIGS_DEFAULT = 10
CONFIGS_MAX = 100


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @app.route(f"{BASE}/functions/<urn>/async-invoke-config", methods=["GET", "PUT", "DELETE"])
    async def async_invoke_config(project_id: str, urn: str) -> Response:
        record = ctx.lookup(project_id, urn)
        if request.method == "PUT":
            record = await ctx.functions.set_async_config(record, await body_json())
        elif request.method == "DELETE":
            record = await ctx.functions.set_async_config(record, {})
            return Response(b"", status=204)
        return json_response(ctx.functions.async_config(record))

    @app.get(f"{BASE}/functions/<urn>/async-invoke-configs")
    async def list_async_invoke_configs(project_id: str, urn: str) -> Response:
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
        return json_response(paged(configs, "async_invoke_configs", at))
