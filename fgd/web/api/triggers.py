"""Triggers: timers and gateway routes bound to a function."""

from __future__ import annotations

from quart import Response
from quart_trio import QuartTrio

from fgd.model import CreateTrigger, Trigger, UpdateTrigger
from fgd.versions import is_latest
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    route,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(app, "POST", f"{BASE}/triggers/<urn>", body=CreateTrigger, answer=Trigger, status=201, errors=(409,))
    async def create_trigger(project_id: str, urn: str) -> Trigger:
        return await ctx.triggers.create(ctx.lookup(project_id, urn), await body_json())

    @route(app, "GET", f"{BASE}/triggers/<urn>", answer=list[Trigger])
    async def list_triggers(project_id: str, urn: str) -> list[Trigger]:
        return ctx.triggers.list(ctx.lookup(project_id, urn))

    @route(app, "DELETE", f"{BASE}/triggers/<urn>", status=204)
    async def delete_triggers(project_id: str, urn: str) -> Response:
        # FunctionGraph's BatchDeleteFunctionTriggers: latest's URN (or the bare one) deletes every
        # trigger of the function; a version's or an alias's, only the triggers bound to it.
        record = ctx.lookup(project_id, urn)
        if is_latest(record):
            await ctx.triggers.delete_all(record)
        else:
            await ctx.triggers.delete_bound(record)
        return Response(b"", status=204)

    @route(app, "GET", f"{BASE}/triggers/<urn>/<kind>/<trigger_id>", answer=Trigger)
    async def get_trigger(project_id: str, urn: str, kind: str, trigger_id: str) -> Trigger:
        return ctx.triggers.get(ctx.lookup(project_id, urn), kind, trigger_id)

    @route(
        app,
        "PUT",
        f"{BASE}/triggers/<urn>/<kind>/<trigger_id>",
        body=UpdateTrigger,
        answer=Trigger,
        errors=(409,),
    )
    async def update_trigger(project_id: str, urn: str, kind: str, trigger_id: str) -> Trigger:
        trigger = ctx.triggers.get(ctx.lookup(project_id, urn), kind, trigger_id)
        return await ctx.triggers.update(trigger, await body_json())

    @route(app, "DELETE", f"{BASE}/triggers/<urn>/<kind>/<trigger_id>", status=204)
    async def delete_trigger(project_id: str, urn: str, kind: str, trigger_id: str) -> Response:
        await ctx.triggers.delete(ctx.triggers.get(ctx.lookup(project_id, urn), kind, trigger_id))
        return Response(b"", status=204)
