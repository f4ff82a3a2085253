"""The management API (Quart): functions, code, logs, runtimes.

The invoke route does not come through here; see `fgd.front`.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from fgd import auth
from fgd.asyncqueue import AsyncEvent
from fgd.config import AsyncConfig
from fgd.dependencies import Dependencies
from fgd.dispatch import Dispatcher
from fgd.errors import Conflict, FgdError, InvalidParameter, MethodNotAllowed, NotFound, Throttled, TooLarge
from fgd.functions import Functions
from fgd.invoker import check_event, new_request_id
from fgd.metrics import Metrics
from fgd.model import FunctionRecord, check_project, parse_function_ref
from fgd.store import Store
from fgd.triggers import Triggers

log = logging.getLogger("fgd.api")

BASE = "/v2/<project_id>/fgs"
MAX_JSON_BODY = 16 * 1024 * 1024
LIST_MAX_ITEMS = 400
FOLLOW_POLL = 0.25
FOLLOW_MAX_SECONDS = 3600

_encoder = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status=status, content_type="application/json")


def error_response(error: FgdError) -> Response:
    return json_response(error.body(), error.status)


def create_app(
    functions: Functions,
    dependencies: Dependencies,
    store: Store,
    logs_flush,
    token: str,
    health,
    metrics: Metrics,
    dispatcher: Dispatcher,
    async_config: AsyncConfig,
    triggers: Triggers,
) -> QuartTrio:
    app = QuartTrio("fgd")
    app.config["MAX_CONTENT_LENGTH"] = MAX_JSON_BODY
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def authenticate() -> None:
        path = request.path
        if path.startswith("/v2/") or path == "/metrics":
            auth.check(token, request.headers.get("X-Auth-Token"), request.headers.get("Authorization"))

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
        return json_response({"error_code": f"FSS.0{error.code}", "error_msg": error.description}, error.code or 500)

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return json_response({"error_code": "FSS.0500", "error_msg": "internal error; see the daemon's log"}, 500)

    async def body_json() -> Any:
        data = await request.get_data()
        if not data:
            raise InvalidParameter("the request body must be a JSON object")
        try:
            return msgspec.json.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError.
            raise InvalidParameter(f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidParameter("the request body is JSON nested too deeply") from None

    def lookup(project_id: str, urn: str) -> FunctionRecord:
        check_project(project_id)
        return functions.get(parse_function_ref(project_id, urn, functions.region))

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz")
    async def healthz() -> Response:
        status = health()
        return json_response(status, 200 if status["status"] == "ok" else 503)

    @app.get(f"{BASE}/runtimes")
    async def list_runtimes(project_id: str) -> Response:
        return json_response({"runtimes": functions.runtimes})

    @app.post(f"{BASE}/functions")
    async def create_function(project_id: str) -> Response:
        check_project(project_id)
        record = await functions.create(project_id, await body_json())
        return json_response(functions.config(record))

    @app.get(f"{BASE}/functions")
    async def list_functions(project_id: str) -> Response:
        check_project(project_id)
        marker = _int_arg("marker", 0, 0, 1 << 31)
        maxitems = _int_arg("maxitems", LIST_MAX_ITEMS, 1, LIST_MAX_ITEMS)
        records = store.list(project_id)
        page = records[marker : marker + maxitems]
        next_marker = marker + len(page)
        return json_response(
            {
                "functions": [functions.config(r) for r in page],
                "next_marker": next_marker if next_marker < len(records) else 0,
                "count": len(records),
            }
        )

    @app.get(f"{BASE}/functions/<urn>/config")
    async def get_config(project_id: str, urn: str) -> Response:
        return json_response(functions.config(lookup(project_id, urn)))

    @app.put(f"{BASE}/functions/<urn>/config")
    async def update_config(project_id: str, urn: str) -> Response:
        record = await functions.update_config(lookup(project_id, urn), await body_json())
        return json_response(functions.config(record))

    @app.get(f"{BASE}/functions/<urn>/code")
    async def get_code(project_id: str, urn: str) -> Response:
        record = lookup(project_id, urn)
        config = functions.config(record)
        return json_response(
            {
                "func_urn": config.func_urn,
                "func_name": record.func_name,
                "runtime": record.runtime,
                "code_type": record.code_type,
                "code_filename": record.code_filename,
                "code_size": record.code.size,
                "digest": record.code.sha512,
                "last_modified": config.last_modified,
            }
        )

    @app.put(f"{BASE}/functions/<urn>/code")
    async def update_code(project_id: str, urn: str) -> Response:
        # Raw application/zip bodies are streamed by the front (fgd.front) and never get here.
        record = await functions.update_code(lookup(project_id, urn), await body_json())
        return json_response(functions.config(record))

    @app.post(f"{BASE}/functions/<urn>/invocations-async")
    async def invoke_async(project_id: str, urn: str) -> Response:
        record = lookup(project_id, urn)
        data = await request.get_data()
        if len(data) > async_config.max_payload:
            raise TooLarge(
                f"the event is {len(data):,} bytes; asynchronous events may be {async_config.max_payload:,} at most"
            )
        if dispatcher.full():
            raise Throttled(
                f"the node has {async_config.max_queued:,} asynchronous invocations waiting or running, "
                "its limit; send this one again later"
            )
        event = AsyncEvent.new(record.key, new_request_id(), check_event(data))
        # Durable before we answer: 202 means it will run (at least once).
        await store.run(store.queue.enqueue, event)
        dispatcher.notify()
        return json_response({"request_id": event.request_id}, 202)

    @app.get(f"{BASE}/functions/<urn>/async-invocations")
    async def list_async(project_id: str, urn: str) -> Response:
        record = lookup(project_id, urn)
        status = request.args.get("status") or None
        if status is not None and status not in ("WAIT", "RUNNING", "SUCCESS", "FAIL", "DISCARD"):
            raise InvalidParameter("status must be one of WAIT, RUNNING, SUCCESS, FAIL, DISCARD")
        limit = _int_arg("limit", 100, 1, 1000)
        events = await store.run(store.queue.find, record.key, request.args.get("request_id") or None, status, limit)
        rows = [
            {
                "request_id": e.request_id,
                "status": e.status,
                "error_code": e.error_code,
                "error_message": e.error_message,
                "start_time": _iso(e.start_time),
                "end_time": _iso(e.end_time),
                "attempts": e.attempts,
            }
            for e in events
        ]
        return json_response({"invocations": rows, "count": len(rows)})

    @app.post(f"{BASE}/functions/<urn>/cancel")
    async def cancel_async(project_id: str, urn: str) -> Response:
        record = lookup(project_id, urn)
        body = await body_json()
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise InvalidParameter('the body must be {"request_id": "<id of a waiting asynchronous invocation>"}')
        if await store.run(store.queue.cancel, record.key, request_id, time.time()):
            return json_response({"request_id": request_id, "status": "DISCARD"})
        found = await store.run(store.queue.find, record.key, request_id, None, 1)
        if not found:
            raise NotFound(f"no asynchronous invocation {request_id} of {record.func_name}")
        raise Conflict(f"invocation {request_id} is {found[0].status}; only a waiting one (WAIT) can be cancelled")

    @app.route(f"{BASE}/functions/<urn>/async-invoke-config", methods=["GET", "PUT", "DELETE"])
    async def async_invoke_config(project_id: str, urn: str) -> Response:
        record = lookup(project_id, urn)
        if request.method == "PUT":
            record = await functions.set_async_config(record, await body_json())
        elif request.method == "DELETE":
            record = await functions.set_async_config(record, {})
            return Response(b"", status=204)
        return json_response(
            {"func_urn": functions.config(record).func_urn, **msgspec.to_builtins(record.async_config)}
        )

    @app.post(f"{BASE}/triggers/<urn>")
    async def create_trigger(project_id: str, urn: str) -> Response:
        trigger = await triggers.create(lookup(project_id, urn), await body_json())
        return json_response(trigger, 201)

    @app.get(f"{BASE}/triggers/<urn>")
    async def list_triggers(project_id: str, urn: str) -> Response:
        return json_response(triggers.list(lookup(project_id, urn)))

    @app.route(f"{BASE}/triggers/<urn>/<kind>/<trigger_id>", methods=["GET", "PUT", "DELETE"])
    async def one_trigger(project_id: str, urn: str, kind: str, trigger_id: str) -> Response:
        trigger = triggers.get(lookup(project_id, urn), kind, trigger_id)
        if request.method == "PUT":
            trigger = await triggers.update(trigger, await body_json())
        elif request.method == "DELETE":
            await triggers.delete(trigger)
            return Response(b"", status=204)
        return json_response(trigger)

    @app.put(f"{BASE}/functions/<urn>/reservedinstances")
    async def put_reserved(project_id: str, urn: str) -> Response:
        record = await functions.set_reserved(lookup(project_id, urn), await body_json())
        return json_response({"func_urn": functions.config(record).func_urn, "count": record.reserved})

    @app.get(f"{BASE}/functions/reservedinstances")
    async def list_reserved(project_id: str) -> Response:
        check_project(project_id)
        rows = [
            {
                "func_urn": functions.config(r).func_urn,
                "qualifier_type": "version",
                "qualifier_name": "latest",
                "min_count": r.reserved,
                "running": functions.reserved_running(r),
            }
            for r in store.list(project_id)
            if r.reserved
        ]
        return json_response({"reservedinstances": rows, "count": len(rows)})

    @app.put(f"{BASE}/functions/<urn>/config-max-instance")
    async def put_max_instances(project_id: str, urn: str) -> Response:
        record = await functions.set_max_instances(lookup(project_id, urn), await body_json())
        return json_response(functions.config(record))

    @app.delete(f"{BASE}/functions/<urn>")
    async def delete_function(project_id: str, urn: str) -> Response:
        await functions.delete(lookup(project_id, urn))
        return Response(b"", status=204)

    @app.get(f"{BASE}/functions/<urn>/export")
    async def export_function(project_id: str, urn: str) -> Response:
        record = lookup(project_id, urn)
        code = _bool_arg("code", True)
        config = _bool_arg("config", False)
        if not (code or config):
            raise InvalidParameter("export needs code=true, config=true or both")
        # Streamed (see Functions.export): no package in memory, no thread held for its length.
        chunks, length = await functions.export(record, code=code, config=config)
        headers = {"Content-Disposition": f'attachment; filename="{record.func_name}.zip"'}
        if length is not None:
            headers["Content-Length"] = str(length)
        response = Response(chunks, content_type="application/zip", headers=headers)
        # A large package to a slow client may take longer than Quart's 60 s default.
        response.timeout = None
        return response

    @app.post(f"{BASE}/dependencies/version")
    async def create_dependency(project_id: str) -> Response:
        check_project(project_id)
        dependency = await dependencies.create(project_id, await body_json())
        return json_response(dependency)

    @app.get(f"{BASE}/dependencies")
    async def list_dependencies(project_id: str) -> Response:
        check_project(project_id)
        found = dependencies.visible(project_id)
        for name in ("name", "runtime", "owner"):
            if request.args.get(name):
                found = [d for d in found if getattr(d, name) == request.args[name]]
        marker = _int_arg("marker", 0, 0, 1 << 31)
        maxitems = _int_arg("maxitems", LIST_MAX_ITEMS, 1, LIST_MAX_ITEMS)
        page = found[marker : marker + maxitems]
        next_marker = marker + len(page)
        return json_response(
            {"dependencies": page, "next_marker": next_marker if next_marker < len(found) else 0, "count": len(found)}
        )

    @app.get(f"{BASE}/dependencies/<dep_id>/version")
    async def list_dependency_versions(project_id: str, dep_id: str) -> Response:
        check_project(project_id)
        versions = dependencies.versions(project_id, dep_id)
        return json_response({"dependencies": versions, "count": len(versions)})

    @app.get(f"{BASE}/dependencies/<dep_id>/version/<int:number>")
    async def get_dependency_version(project_id: str, dep_id: str, number: int) -> Response:
        check_project(project_id)
        return json_response(dependencies.version(project_id, dep_id, number))

    @app.delete(f"{BASE}/dependencies/<dep_id>/version/<int:number>")
    async def delete_dependency_version(project_id: str, dep_id: str, number: int) -> Response:
        check_project(project_id)
        await dependencies.delete(project_id, dep_id, number)
        return Response(b"", status=204)

    @app.get(f"{BASE}/functions/<urn>/logs")
    async def function_logs(project_id: str, urn: str) -> Response:
        record = lookup(project_id, urn)
        request_id = request.args.get("request_id") or None
        since = _float_arg("since")
        limit = _int_arg("limit", 100, 1, 10000)
        follow = _bool_arg("follow", False)

        async def read(after_id: int, count: int) -> list:
            await logs_flush()
            return await store.run(
                store.read_logs, record.key, request_id=request_id, since=since, after_id=after_id, limit=count
            )

        rows = await read(0, limit)
        if not follow:
            return json_response({"logs": [line for _, line in rows], "count": len(rows)})

        async def stream():
            last = rows[-1][0] if rows else 0
            for _, line in rows:
                yield _encoder.encode(line) + b"\n"
            with trio.move_on_after(FOLLOW_MAX_SECONDS):
                while True:
                    await trio.sleep(FOLLOW_POLL)
                    for row_id, line in await read(last, 10000):
                        last = row_id
                        yield _encoder.encode(line) + b"\n"

        response = Response(stream(), content_type="application/x-ndjson")
        response.timeout = None
        return response

    return app


def _iso(epoch: float) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InvalidParameter(f"{name} must be between {low} and {high}")
    return value


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be a Unix timestamp in seconds") from None


def _bool_arg(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise InvalidParameter(f"{name} must be true or false")
