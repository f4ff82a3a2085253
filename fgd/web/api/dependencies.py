"""Dependency packages and their versions."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from fgd.model import CreateDependency, DependencyInfo, DependencyList
from fgd.web.api.answers import DependencyQuery, RawDependencyQuery
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    page,
    route,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(
        app,
        "POST",
        f"{BASE}/dependencies/version",
        body=CreateDependency,
        raw_zip=RawDependencyQuery,
        answer=DependencyInfo,
        errors=(413,),
    )
    async def create_dependency(project_id: str) -> DependencyInfo:
        dependency = await ctx.dependencies.create(project_id, await body_json())
        return ctx.dependencies.info(dependency)

    @route(app, "GET", f"{BASE}/dependencies", query=DependencyQuery, answer=DependencyList)
    async def list_dependencies(project_id: str) -> DependencyList:
        found = ctx.dependencies.visible(project_id)
        for name in ("name", "runtime", "owner"):
            if request.args.get(name):
                found = [d for d in found if getattr(d, name) == request.args[name]]
        listing = page(found, "dependencies")
        listing["dependencies"] = [ctx.dependencies.info(d) for d in listing["dependencies"]]
        return DependencyList(**listing)

    @route(app, "GET", f"{BASE}/dependencies/<dep_id>/version", answer=DependencyList)
    async def list_dependency_versions(project_id: str, dep_id: str) -> DependencyList:
        versions = ctx.dependencies.versions(project_id, dep_id)
        return DependencyList(dependencies=[ctx.dependencies.info(d) for d in versions], count=len(versions))

    @route(app, "GET", f"{BASE}/dependencies/<dep_id>/version/<int:number>", answer=DependencyInfo)
    async def get_dependency_version(project_id: str, dep_id: str, number: int) -> DependencyInfo:
        return ctx.dependencies.info(ctx.dependencies.version(project_id, dep_id, number))

    @route(app, "DELETE", f"{BASE}/dependencies/<dep_id>/version/<int:number>", status=204, errors=(403, 409))
    async def delete_dependency_version(project_id: str, dep_id: str, number: int) -> Response:
        await ctx.dependencies.delete(project_id, dep_id, number)
        return Response(b"", status=204)
