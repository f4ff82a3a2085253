"""Access keys (fgd): made, listed and removed with the admin token only; a key cannot mint keys.

POST   /v2/{project_id}/fgs/fgd/keys            {"description": "..."} -> the key with its secret, once
GET    /v2/{project_id}/fgs/fgd/keys            {"keys": [...], "count": n}, never secrets
DELETE /v2/{project_id}/fgs/fgd/keys/{access}   204; requests signed with it are refused at once
"""

from __future__ import annotations

from quart import Response, g, request
from quart_trio import QuartTrio

from fgd.errors import Forbidden, InvalidParameter
from fgd.web.api.common import BASE, ApiContext, body_json, json_response


def require_admin() -> None:
    if not g.get("admin", False):
        raise Forbidden(
            "access keys are managed with the admin token only; a signed request cannot make or remove keys"
        )


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @app.post(f"{BASE}/fgd/keys")
    async def create_key(project_id: str) -> Response:
        require_admin()
        body = await body_json() if await request.get_data() else {}
        if not isinstance(body, dict) or set(body) - {"description"}:
            raise InvalidParameter('the body must be {"description": "<what the key is for>"} or empty')
        return json_response(await ctx.keys.create(project_id, body.get("description", "")), 201)

    @app.get(f"{BASE}/fgd/keys")
    async def list_keys(project_id: str) -> Response:
        require_admin()
        keys = ctx.keys.list(project_id)
        return json_response({"keys": keys, "count": len(keys)})

    @app.delete(f"{BASE}/fgd/keys/<access>")
    async def remove_key(project_id: str, access: str) -> Response:
        require_admin()
        await ctx.keys.remove(project_id, access)
        return Response(b"", status=204)
