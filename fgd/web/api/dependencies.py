"""Dependency packages and their versions."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from fgd.model import check_project
from fgd.web.api.common import (
    BASE,
    ApiContext,
    body_json,
    json_response,
    page,
)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @app.post(f"{BASE}/dependencies/version")
    async def create_dependency(project_id: str) -> Response:
        check_project(project_id)
        dependency = await ctx.dependencies.create(project_id, await body_json())
        return json_response(dependency)

    @app.get(f"{BASE}/dependencies")
    async def list_dependencies(project_id: str) -> Response:
        check_project(project_id)
        found = ctx.dependencies.visible(project_id)
        for name in ("name", "runtime", "owner"):
            if request.args.get(name):
                found = [d for d in found if getattr(d, name) == request.args[name]]
        return json_response(page(found, "dependencies"))

    @app.get(f"{BASE}/dependencies/<dep_id>/version")
    async def list_dependency_versions(project_id: str, dep_id: str) -> Response:
        check_project(project_id)
        versions = ctx.dependencies.versions(project_id, dep_id)
        return json_response({"dependencies": versions, "count": len(versions)})

    @app.get(f"{BASE}/dependencies/<dep_id>/version/<int:number>")
    async def get_dependency_version(project_id: str, dep_id: str, number: int) -> Response:
        check_project(project_id)
        return json_response(ctx.dependencies.version(project_id, dep_id, number))

    @app.delete(f"{BASE}/dependencies/<dep_id>/version/<int:number>")
    async def delete_dependency_version(project_id: str, dep_id: str, number: int) -> Response:
        check_project(project_id)
        await ctx.dependencies.delete(project_id, dep_id, number)
        return Response(b"", status=204)
