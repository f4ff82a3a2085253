"""Triggers: timers and gateway routes bound to a function."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from fgd.versions import is_latest
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    json_response,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @app.post(f"{BASE}/triggers/<urn>")
    async def create_trigger(project_id: str, urn: str) -> Response:
        trigger = await ctx.triggers.create(ctx.lookup(project_id, urn), await body_json())
        return json_response(trigger, 201)

    @app.get(f"{BASE}/triggers/<urn>")
    async def list_triggers(project_id: str, urn: str) -> Response:
        return json_response(ctx.triggers.list(ctx.lookup(project_id, urn)))

    @app.delete(f"{BASE}/triggers/<urn>")
    async def delete_triggers(project_id: str, urn: str) -> Response:
        # FunctionGraph's BatchDeleteFunctionTriggers: latest's URN (or the bare one) deletes every
        # trigger of the function; a version's or an alias's, only the triggers bound to it.
        record = ctx.lookup(project_id, urn)
        if is_latest(record):
            await ctx.triggers.delete_all(record)
        else:
            await ctx.triggers.delete_bound(record)
        return Response(b"", status=204)

    @app.route(f"{BASE}/triggers/<urn>/<kind>/<trigger_id>", methods=["GET", "PUT", "DELETE"])
    async def one_trigger(project_id: str, urn: str, kind: str, trigger_id: str) -> Response:
        trigger = ctx.triggers.get(ctx.lookup(project_id, urn), kind, trigger_id)
        if request.method == "PUT":
            trigger = await ctx.triggers.update(trigger, await body_json())
        elif request.method == "DELETE":
            await ctx.triggers.delete(trigger)
            return Response(b"", status=204)
        return json_response(trigger)
