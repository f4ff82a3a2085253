"""Functions: create, list, configuration, code, capacity settings, export, delete; the runtimes."""

from __future__ import annotations

import re

from quart import Response, request
from quart_trio import QuartTrio

from fgd.errors import InvalidParameter, NotFound
from fgd.model import (
    PACKAGE_RE,
    CreateFunction,
    FunctionCode,
    FunctionConfig,
    FunctionList,
    FunctionRecord,
    FunctionSettings,
    ReservedAnswer,
    ReservedInstances,
    UpdateCode,
    function_urn,
    parse_function_ref,
)
from fgd.versions import reserved_targets
from fgd.web.api.answers import (
    ExportQuery,
    FunctionListQuery,
    MaxInstanceBody,
    RawCodeQuery,
    ReservedConfigsQuery,
    ReservedInstanceConfigList,
    ReservedInstanceList,
    ReservedQuery,
    Runtimes,
)
from fgd.web.api.common import (
    BASE,
    LIST_MAX_ITEMS,
    ApiContext,
    Partial,
    body_json,
    bool_arg,
    paged,
    route,
    window,
)

# What a `func_name` filter may hold: a part of a function name (FuncName's characters).
NAME_FILTER = re.compile(r"^[A-Za-z0-9_-]{1,60}\Z")
RESERVED_CONFIGS_MAX = 500


def _name_filter() -> str | None:
    value = request.args.get("func_name")
    if not value:
        return None
    if not NAME_FILTER.match(value):
        raise InvalidParameter(
            "func_name must be 1-60 letters, digits, '_' or '-' (a part of a function name; "
            "names have no other characters)"
        )
    return value.lower()


def _package_filter() -> str | None:
    value = request.args.get("package_name")
    if not value:
        return None
    if not re.match(PACKAGE_RE, value):
        raise InvalidParameter("package_name must be 1-64 letters, digits, '_' or '-'")
    return value


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(app, "GET", f"{BASE}/runtimes", answer=Runtimes)
    async def list_runtimes(project_id: str) -> Runtimes:
        # Issue 12: every accepted name, and the interpreter (path, version) serving each.
        catalogue = ctx.functions.runtimes
        return {
            "runtimes": catalogue.names(),
            "served_by": catalogue.served_by(),
            "exact_versions": catalogue.exact,
            "interpreters": catalogue.describe_interpreters(),
        }

    @route(app, "POST", f"{BASE}/functions", body=CreateFunction, answer=FunctionConfig, errors=(409,))
    async def create_function(project_id: str) -> FunctionConfig:
        record = await ctx.functions.create(project_id, await body_json())
        return ctx.functions.config(record)

    @route(app, "GET", f"{BASE}/functions", query=FunctionListQuery, answer=FunctionList)
    async def list_functions(project_id: str) -> FunctionList:
        # FunctionGraph's ListFunctions: func_name matches any part of a name, case aside;
        # package_name the whole package. maxitems: none, 0 or over 400 means 400 functions.
        name, package = _name_filter(), _package_filter()
        at = window("maxitems", LIST_MAX_ITEMS, LIST_MAX_ITEMS)
        found = [
            r
            for r in ctx.store.list(project_id)
            if (name is None or name in r.func_name.lower()) and (package is None or r.package == package)
        ]
        listing = paged(found, "functions", at)
        # ListFunctions has the older shape: next_marker at the top, no page_info.
        return FunctionList(
            functions=[ctx.functions.config(r) for r in listing["functions"]],
            next_marker=listing["page_info"]["next_marker"],
            count=listing["count"],
        )

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

    def reserved_of(project_id: str, urn_arg: str) -> list[FunctionRecord]:
        """The functions with reserved instances, or the one `urn_arg` names (even with none)."""
        urn = request.args.get(urn_arg)
        if urn:
            ref = parse_function_ref(project_id, urn, ctx.functions.region)
            try:
                return [ctx.functions.get(ref)]
            except NotFound:
                return []
        # latest, versions and aliases each keep their own (fgd.versions).
        return [r for r in reserved_targets(ctx.store) if r.project_id == project_id and r.reserved]

    # Fixed names under /functions/ are matched before /functions/<urn> (Werkzeug ranks static
    # segments first), and no GET route takes /functions/<urn> alone: a function named
    # "reservedinstances" or "statistics" keeps its own routes (.../functions/statistics/config).

    @route(app, "GET", f"{BASE}/functions/reservedinstances", query=ReservedQuery, answer=ReservedInstanceList)
    async def list_reserved(project_id: str) -> ReservedInstanceList:
        # FunctionGraph's ListFunctionReservedInstances ({func_urn, count} items); fgd's own
        # fields (qualifier, min_count, running) stay alongside.
        at = window("limit", LIST_MAX_ITEMS, LIST_MAX_ITEMS)
        rows = [
            {
                "func_urn": function_urn(ctx.functions.region, r, r.qualifier),
                "count": r.reserved,
                "qualifier_type": "alias" if r.alias else "version",
                "qualifier_name": r.alias or r.version,
                "min_count": r.reserved,
                "running": ctx.functions.reserved_running(r),
            }
            for r in reserved_of(project_id, "urn")
        ]
        return paged(rows, "reservedinstances", at)

    @route(
        app,
        "GET",
        f"{BASE}/functions/reservedinstanceconfigs",
        query=ReservedConfigsQuery,
        answer=ReservedInstanceConfigList,
    )
    async def list_reserved_configs(project_id: str) -> ReservedInstanceConfigList:
        # FunctionGraph's ListReservedInstanceConfigs. fgd keeps reserved instances always
        # started (idle_mode is stored and returned only); no scheduled or metric-driven policies.
        at = window("limit", 100, RESERVED_CONFIGS_MAX)
        rows = [
            {
                "function_urn": function_urn(ctx.functions.region, r, r.qualifier),
                "qualifier_type": "alias" if r.alias else "version",
                "qualifier_name": r.alias or r.version,
                "min_count": r.reserved,
                "idle_mode": r.reserved_idle_mode,
                "tactics_config": {"cron_configs": [], "metric_configs": []},
            }
            for r in reserved_of(project_id, "function_urn")
        ]
        return paged(rows, "reserved_instances", at)

    @route(app, "PUT", f"{BASE}/functions/<urn>/config-max-instance", body=MaxInstanceBody, answer=FunctionConfig)
    async def put_max_instances(project_id: str, urn: str) -> FunctionConfig:
        record = await ctx.functions.set_max_instances(ctx.lookup(project_id, urn), await body_json())
        return ctx.functions.config(record)

    @route(app, "DELETE", f"{BASE}/functions/<urn>", status=204, errors=(409,))
    async def delete_function(project_id: str, urn: str) -> Response:
        record = ctx.lookup(project_id, urn)
        if names_latest(urn, record):
            # FunctionGraph: "the latest version of a function cannot be deleted"; the function
            # with all its versions goes by its URN without a version.
            unqualified = ctx.functions.config(record).func_urn.removesuffix(":latest")
            raise InvalidParameter(
                f"the latest version cannot be deleted on its own; to delete the function with all its "
                f"versions, aliases and triggers, use its URN without a version: {unqualified}"
            )
        await ctx.functions.delete(record)
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


def names_latest(urn: str, record: FunctionRecord) -> bool:
    """True if `urn` names the latest version explicitly (`...:latest`), not the bare function."""
    parts = urn.split(":")
    if parts[-1] != "latest" or len(parts) not in (2, 4, 8):
        return False
    # `a:latest` is package a's function "latest" when that is what it found.
    return not (len(parts) == 2 and (record.package, record.func_name) == (parts[0], parts[1]))
