"""Functions: create, list, configuration, code, capacity settings, export, delete; the runtimes."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from fgd.errors import InvalidParameter
from fgd.model import check_project
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    bool_arg,
    json_response,
    page,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @app.get(f"{BASE}/runtimes")
    async def list_runtimes(project_id: str) -> Response:
        return json_response({"runtimes": ctx.functions.runtimes})

    @app.post(f"{BASE}/functions")
    async def create_function(project_id: str) -> Response:
        check_project(project_id)
        record = await ctx.functions.create(project_id, await body_json())
        return json_response(ctx.functions.config(record))

    @app.get(f"{BASE}/functions")
    async def list_functions(project_id: str) -> Response:
        check_project(project_id)
        listing = page(ctx.store.list(project_id), "functions")
        listing["functions"] = [ctx.functions.config(r) for r in listing["functions"]]
        return json_response(listing)

    @app.get(f"{BASE}/functions/<urn>/config")
    async def get_config(project_id: str, urn: str) -> Response:
        return json_response(ctx.functions.config(ctx.lookup(project_id, urn)))

    @app.put(f"{BASE}/functions/<urn>/config")
    async def update_config(project_id: str, urn: str) -> Response:
        record = await ctx.functions.update_config(ctx.lookup(project_id, urn), await body_json())
        return json_response(ctx.functions.config(record))

    @app.get(f"{BASE}/functions/<urn>/code")
    async def get_code(project_id: str, urn: str) -> Response:
        record = ctx.lookup(project_id, urn)
        config = ctx.functions.config(record)
        return json_response(
            {
                "func_urn": config.func_urn,
                "func_name": record.func_name,
                "runtime": record.runtime,
                "code_type": record.code_type,
                "code_filename": record.code_filename,
                "code_size": record.code.size,
                "digest": record.code.sha512,
                "last_modified": config.last_modified,
            }
        )

    @app.put(f"{BASE}/functions/<urn>/code")
    async def update_code(project_id: str, urn: str) -> Response:
        # Raw application/zip bodies are streamed by the front (fgd.web.front) and never get here.
        record = await ctx.functions.update_code(ctx.lookup(project_id, urn), await body_json())
        return json_response(ctx.functions.config(record))

    @app.put(f"{BASE}/functions/<urn>/reservedinstances")
    async def put_reserved(project_id: str, urn: str) -> Response:
        record = await ctx.functions.set_reserved(ctx.lookup(project_id, urn), await body_json())
        return json_response({"func_urn": ctx.functions.config(record).func_urn, "count": record.reserved})

    @app.get(f"{BASE}/functions/reservedinstances")
    async def list_reserved(project_id: str) -> Response:
        check_project(project_id)
        rows = [
            {
                "func_urn": ctx.functions.config(r).func_urn,
                "qualifier_type": "version",
                "qualifier_name": "latest",
                "min_count": r.reserved,
                "running": ctx.functions.reserved_running(r),
            }
            for r in ctx.store.list(project_id)
            if r.reserved
        ]
        return json_response({"reservedinstances": rows, "count": len(rows)})

    @app.put(f"{BASE}/functions/<urn>/config-max-instance")
    async def put_max_instances(project_id: str, urn: str) -> Response:
        record = await ctx.functions.set_max_instances(ctx.lookup(project_id, urn), await body_json())
        return json_response(ctx.functions.config(record))

    @app.delete(f"{BASE}/functions/<urn>")
    async def delete_function(project_id: str, urn: str) -> Response:
        await ctx.functions.delete(ctx.lookup(project_id, urn))
        return Response(b"", status=204)

    @app.get(f"{BASE}/functions/<urn>/export")
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
