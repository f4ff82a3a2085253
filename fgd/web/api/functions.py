"""Functions: create, list, configuration, code, capacity settings, export, delete; the runtimes."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from fgd.errors import InvalidParameter
from fgd.model import (
    CreateFunction,
    FunctionCode,
    FunctionConfig,
    FunctionList,
    FunctionSettings,
    ReservedAnswer,
    ReservedInstances,
    UpdateCode,
    check_project,
)
from fgd.web.api.answers import (
    ExportQuery,
    MaxInstanceBody,
    PageQuery,
    RawCodeQuery,
    ReservedInstance,
    ReservedInstanceList,
    Runtimes,
)
from fgd.web.api.common import (
    BASE,
    ApiContext,
    Partial,
    body_json,
    bool_arg,
    page,
    route,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(app, "GET", f"{BASE}/runtimes", answer=Runtimes)
    async def list_runtimes(project_id: str) -> Runtimes:
        return Runtimes(runtimes=ctx.functions.runtimes)

    @route(app, "POST", f"{BASE}/functions", body=CreateFunction, answer=FunctionConfig, errors=(409,))
    async def create_function(project_id: str) -> FunctionConfig:
        check_project(project_id)
        record = await ctx.functions.create(project_id, await body_json())
        return ctx.functions.config(record)

    @route(app, "GET", f"{BASE}/functions", query=PageQuery, answer=FunctionList)
    async def list_functions(project_id: str) -> FunctionList:
        check_project(project_id)
        listing = page(ctx.store.list(project_id), "functions")
        listing["functions"] = [ctx.functions.config(r) for r in listing["functions"]]
        return FunctionList(**listing)

    @route(app, "GET", f"{BASE}/functions/<urn>/config", answer=FunctionConfig)
    async def get_config(project_id: str, urn: str) -> FunctionConfig:
        return ctx.functions.config(ctx.lookup(project_id, urn))

    @route(app, "PUT", f"{BASE}/functions/<urn>/config", body=Partial(struct=FunctionSettings), answer=FunctionConfig)
    async def update_config(project_id: str, urn: str) -> FunctionConfig:
        record = await ctx.functions.update_config(ctx.lookup(project_id, urn), await body_json())
        return ctx.functions.config(record)

    @route(app, "GET", f"{BASE}/functions/<urn>/code", answer=FunctionCode)
    async def get_code(project_id: str, urn: str) -> FunctionCode:
        return ctx.functions.code_info(ctx.lookup(project_id, urn))

    @route(
        app,
        "PUT",
        f"{BASE}/functions/<urn>/code",
        body=UpdateCode,
        raw_zip=RawCodeQuery,
        answer=FunctionConfig,
        errors=(413,),
    )
    async def update_code(project_id: str, urn: str) -> FunctionConfig:
        # Raw application/zip bodies are streamed by the front (fgd.web.front) and never get here.
        record = await ctx.functions.update_code(ctx.lookup(project_id, urn), await body_json())
        return ctx.functions.config(record)

    @route(app, "PUT", f"{BASE}/functions/<urn>/reservedinstances", body=ReservedInstances, answer=ReservedAnswer)
    async def put_reserved(project_id: str, urn: str) -> ReservedAnswer:
        record = await ctx.functions.set_reserved(ctx.lookup(project_id, urn), await body_json())
        return ctx.functions.reserved(record)

    @route(app, "GET", f"{BASE}/functions/reservedinstances", answer=ReservedInstanceList)
    async def list_reserved(project_id: str) -> ReservedInstanceList:
        check_project(project_id)
        rows = [
            ReservedInstance(
                func_urn=ctx.functions.config(r).func_urn,
                qualifier_type="version",
                qualifier_name="latest",
                min_count=r.reserved,
                running=ctx.functions.reserved_running(r),
            )
            for r in ctx.store.list(project_id)
            if r.reserved
        ]
        return ReservedInstanceList(reservedinstances=rows, count=len(rows))

    @route(app, "PUT", f"{BASE}/functions/<urn>/config-max-instance", body=MaxInstanceBody, answer=FunctionConfig)
    async def put_max_instances(project_id: str, urn: str) -> FunctionConfig:
        record = await ctx.functions.set_max_instances(ctx.lookup(project_id, urn), await body_json())
        return ctx.functions.config(record)

    @route(app, "DELETE", f"{BASE}/functions/<urn>", status=204)
    async def delete_function(project_id: str, urn: str) -> Response:
        await ctx.functions.delete(ctx.lookup(project_id, urn))
        return Response(b"", status=204)

    @route(
        app,
        "GET",
        f"{BASE}/functions/<urn>/export",
        query=ExportQuery,
        answer=bytes,
        content_type="application/zip",
    )
    async def export_function(project_id: str, urn: str) -> Response:
        record = ctx.lookup(project_id, urn)
        code = bool_arg("code", True)
        config = bool_arg("config", False)
        if not (code or config):
            raise InvalidParameter("export needs code=true, config=true or both")
        # Streamed (see Functions.export): no package in memory, no thread held for its length.
        chunks, length = await ctx.functions.export(record, code=code, config=config)
        headers = {"Content-Disposition": f'attachment; filename="{record.func_name}.zip"'}
        if length is not None:
            headers["Content-Length"] = str(length)
        response = Response(chunks, content_type="application/zip", headers=headers)
        # A large package to a slow client may take longer than Quart's 60 s default.
        response.timeout = None
        return response
