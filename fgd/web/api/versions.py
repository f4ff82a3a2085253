"""Versions and aliases: publish, list; create, show, change, delete aliases (fgd.versions).

Deleting one version is `DELETE /functions/{urn-with-version}` (fgd.web.api.functions).
"""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from fgd.model import AliasAnswer, CreateAlias, FunctionRecord, PublishVersion, UpdateAlias
from fgd.web.api.answers import FunctionVersion, FunctionVersionList, PageQuery
from fgd.web.api.common import BASE, ApiContext, body_json, page, route


def register(app: QuartTrio, ctx: ApiContext) -> None:
    def version_answer(record: FunctionRecord) -> dict[str, Any]:
        """FunctionGraph's version model (ListFunctionVersionResult, CreateFunctionVersionResponse)."""
        answer = msgspec.to_builtins(ctx.functions.config(record))
        strategy = record.settings.strategy_config
        answer.update(
            version_description=record.version_description,
            concurrency=record.effective_max_instances,
            concurrent_num=strategy.concurrent_num,
            function_async_config=msgspec.to_builtins(ctx.functions.async_config(record)),
        )
        return answer

    async def optional_json() -> Any:
        """The body as JSON; none at all is {} (every field of a publish is optional)."""
        data = await request.get_data()
        if not data.strip():
            return {}
        return await body_json()

    @route(
        app,
        "POST",
        f"{BASE}/functions/<urn>/versions",
        body=PublishVersion,
        body_optional=True,
        answer=FunctionVersion,
        errors=(409,),
    )
    async def publish_version(project_id: str, urn: str) -> dict[str, Any]:
        record = ctx.lookup(project_id, urn)
        version = await ctx.functions.versions.publish(record, await optional_json())
        return version_answer(version)

    @route(app, "GET", f"{BASE}/functions/<urn>/versions", query=PageQuery, answer=FunctionVersionList)
    async def list_versions(project_id: str, urn: str) -> dict[str, Any]:
        record = ctx.lookup(project_id, urn)
        listing = page(ctx.functions.versions.list(record.key), "versions")
        listing["versions"] = [version_answer(v) for v in listing["versions"]]
        return listing

    @route(app, "POST", f"{BASE}/functions/<urn>/aliases", body=CreateAlias, answer=AliasAnswer, errors=(409,))
    async def create_alias(project_id: str, urn: str) -> AliasAnswer:
        record = ctx.lookup(project_id, urn)
        alias = await ctx.functions.versions.create_alias(record, await body_json())
        return ctx.functions.versions.answer(record, alias)

    @route(app, "GET", f"{BASE}/functions/<urn>/aliases", answer=list[AliasAnswer])
    async def list_aliases(project_id: str, urn: str) -> list[AliasAnswer]:
        # FunctionGraph answers a bare JSON array (ListVersionAliasesResponse.body).
        record = ctx.lookup(project_id, urn)
        versions = ctx.functions.versions
        return [versions.answer(record, a) for a in versions.aliases(record.key)]

    @route(app, "GET", f"{BASE}/functions/<urn>/aliases/<name>", answer=AliasAnswer)
    async def show_alias(project_id: str, urn: str, name: str) -> AliasAnswer:
        record = ctx.lookup(project_id, urn)
        versions = ctx.functions.versions
        return versions.answer(record, versions.alias(record.key, name))

    @route(app, "PUT", f"{BASE}/functions/<urn>/aliases/<name>", body=UpdateAlias, answer=AliasAnswer, errors=(409,))
    async def update_alias(project_id: str, urn: str, name: str) -> AliasAnswer:
        record = ctx.lookup(project_id, urn)
        versions = ctx.functions.versions
        alias = await versions.update_alias(record, name, await body_json())
        return versions.answer(record, alias)

    @route(app, "DELETE", f"{BASE}/functions/<urn>/aliases/<name>", status=204, errors=(409,))
    async def delete_alias(project_id: str, urn: str, name: str) -> Response:
        record = ctx.lookup(project_id, urn)
        await ctx.functions.versions.delete_alias(record, name)
        return Response(b"", status=204)
