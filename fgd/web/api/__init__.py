"""The management API (Quart): one module per resource, around one `ApiContext`.

The sync invoke route and raw code uploads do not come through here; see `fgd.web.front`.
"""

from __future__ import annotations

import logging

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from fgd.errors import ErrorBody, FgdError, MethodNotAllowed, NotFound, TooLarge
from fgd.model import check_project
from fgd.web import openapi
from fgd.web.api import (
    asynchronous,
    dependencies,
    functions,
    invocations,
    keys,
    observability,
    statistics,
    triggers,
    versions,
)
from fgd.web.api.common import MAX_JSON_BODY, ApiContext, error_response, json_response

__all__ = ["ApiContext", "create_app"]

log = logging.getLogger("fgd.web.api")

RESOURCES = (functions, invocations, asynchronous, triggers, dependencies, observability, keys, statistics, versions)


def create_app(ctx: ApiContext) -> QuartTrio:
    app = QuartTrio("fgd")
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BODY
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def authenticate() -> None:
        scope = request.scope
        path = scope["path"]
        if path.startswith("/v2/") or path == "/metrics":
            admission = ctx.auth.start_asgi(scope)
            if admission.signed:
                # A signature covers the body: read it here (Quart keeps it for the route).
                admission.update(await request.get_data())
            admission.finish()
            # Routes that only the admin token may use (keys) look here.
            g.admin = admission.admin
        # Every route under /v2/<project_id>/: the project's name is checked once, here.
        project_id = (request.view_args or {}).get("project_id")
        if project_id is not None:
            check_project(project_id)

    @app.errorhandler(FgdError)
    async def on_platform_error(error: FgdError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        if error.code == 404:
            return error_response(NotFound(f"no such resource: {request.method} {request.path}"))
        if error.code == 405:
            return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"))
        if error.code == 413:
            return error_response(
                TooLarge(f"the request body is over {MAX_JSON_BODY // (1024 * 1024)} MB; send code as a raw zip")
            )
        return json_response(ErrorBody(f"FSS.0{error.code}", error.description or ""), error.code or 500)

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return json_response(ErrorBody("FSS.0500", "internal error; see the daemon's log"), 500)

    for resource in RESOURCES:
        resource.register(app, ctx)
    # Last: the document describes every route registered above.
    openapi.register(app)
    return app
