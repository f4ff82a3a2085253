"""Access keys (fgd): made, listed and removed with the admin token only; a key cannot mint keys.

POST   /v2/{project_id}/fgs/fgd/keys            {"description": "..."} -> the key with its secret, once
GET    /v2/{project_id}/fgs/fgd/keys            {"keys": [...], "count": n}, never secrets
DELETE /v2/{project_id}/fgs/fgd/keys/{access}   204; requests signed with it are refused at once
"""

from __future__ import annotations

from quart import Response, g, request
from quart_trio import QuartTrio

from fgd.errors import Forbidden, InvalidParameter
from fgd.keys import NewKey
from fgd.web.api.answers import KeyDescription, KeyList
from fgd.web.api.common import BASE, ApiContext, body_json, route


def require_admin() -> None:
    if not g.get("admin", False):
        raise Forbidden(
            "access keys are managed with the admin token only; a signed request cannot make or remove keys"
        )


def register(app: QuartTrio, ctx: ApiContext) -> None:
    @route(
        app,
        "POST",
        f"{BASE}/fgd/keys",
        body=KeyDescription,
        body_optional=True,
        answer=NewKey,
        status=201,
        errors=(403, 409),
    )
    async def create_key(project_id: str) -> NewKey:
        require_admin()
        body = await body_json() if await request.get_data() else {}
        if not isinstance(body, dict) or set(body) - {"description"}:
            raise InvalidParameter('the body must be {"description": "<what the key is for>"} or empty')
        return await ctx.keys.create(project_id, body.get("description", ""))

    @route(app, "GET", f"{BASE}/fgd/keys", answer=KeyList, errors=(403,))
    async def list_keys(project_id: str) -> KeyList:
        require_admin()
        keys = ctx.keys.list(project_id)
        return KeyList(keys=keys, count=len(keys))

    @route(app, "DELETE", f"{BASE}/fgd/keys/<access>", status=204, errors=(403,))
    async def remove_key(project_id: str, access: str) -> Response:
        require_admin()
        await ctx.keys.remove(project_id, access)
        return Response(b"", status=204)
