"""The management API (Quart): one module per resource, around one `ApiContext`.

The sync invoke route and raw code uploads do not come through here; see `fgd.web.front`.
"""

from __future__ import annotations

import logging

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from fgd.errors import ErrorBody, FgdError, MethodNotAllowed, NotFound, TooLarge
from fgd.web import auth, openapi
from fgd.web.api import asynchronous, dependencies, functions, invocations, observability, triggers
from fgd.web.api.common import MAX_JSON_BODY, ApiContext, error_response, json_response

__all__ = ["ApiContext", "create_app"]

log = logging.getLogger("fgd.web.api")

RESOURCES = (functions, invocations, asynchronous, triggers, dependencies, observability)


def create_app(ctx: ApiContext) -> QuartTrio:
    app = QuartTrio("fgd")
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BODY
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def authenticate() -> None:
        path = request.path
        if path.startswith("/v2/") or path == "/metrics":
            auth.check(ctx.token, request.headers.get("X-Auth-Token"), request.headers.get("Authorization"))

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
