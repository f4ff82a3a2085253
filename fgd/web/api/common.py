"""What every resource module of the management API shares: its context, JSON in and out, arguments."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from quart import Response, request

from fgd.config import AsyncConfig, Config
from fgd.dependencies import Dependencies
from fgd.dispatch import Dispatcher
from fgd.errors import FgdError, InvalidParameter
from fgd.functions import Functions
from fgd.keys import Keys
from fgd.metrics import Metrics
from fgd.model import FunctionRecord, parse_function_ref
from fgd.store import Store
from fgd.triggers import Triggers
from fgd.web.auth import Authenticator

BASE = "/v2/<project_id>/fgs"
MAX_JSON_BODY = 16 * 1024 * 1024
LIST_MAX_ITEMS = 400

encoder = msgspec.json.Encoder()


@dataclass(frozen=True, kw_only=True)
class ApiContext:
    """The daemon's services as the routes see them."""

    functions: Functions
    dependencies: Dependencies
    store: Store
    triggers: Triggers
    dispatcher: Dispatcher
    metrics: Metrics
    async_config: AsyncConfig
    token: str
    # AK/SK: access keys, and the check of the admin token or a signature (fgd.web.auth).
    keys: Keys
    auth: Authenticator
    # Reports the daemon's health ({"status": "ok" | ...}) for /healthz.
    health: Callable[[], dict[str, Any]]
    # Writes buffered log lines to the store, so a read sees every line written so far.
    logs_flush: Callable[[], Awaitable[None]]
    # The node's configuration, for the limits GET /quotas reports.
    config: Config = field(default_factory=Config)

    def lookup(self, project_id: str, urn: str) -> FunctionRecord:
        return self.functions.get(parse_function_ref(project_id, urn, self.functions.region))


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encoder.encode(value), status=status, content_type="application/json")


def error_response(error: FgdError) -> Response:
    return json_response(error.body(), error.status)


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


def iso(epoch: float) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def int_arg(name: str, default: int, low: int, high: int) -> int:
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


def float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be a Unix timestamp in seconds") from None


def bool_arg(name: str, default: bool) -> bool:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise InvalidParameter(f"{name} must be true or false")


def page(items: list, key: str) -> dict[str, Any]:
    """One page of `items` by the marker/maxitems arguments, in FunctionGraph's list shape."""
    marker = int_arg("marker", 0, 0, 1 << 31)
    maxitems = int_arg("maxitems", LIST_MAX_ITEMS, 1, LIST_MAX_ITEMS)
    chunk = items[marker : marker + maxitems]
    next_marker = marker + len(chunk)
    return {key: chunk, "next_marker": next_marker if next_marker < len(items) else 0, "count": len(items)}


class Window(msgspec.Struct, frozen=True):
    """Where one page of a list starts and how long it may be."""

    marker: int
    limit: int


def window(limit_name: str, default: int, maximum: int) -> Window:
    """The `marker` and `limit_name` arguments by FunctionGraph's rule for its newer lists: no
    value or 0 means `default`, over `maximum` means `maximum`; a negative or non-integer value,
    or a marker past 2**31, is a 400 naming the argument."""
    marker = int_arg("marker", 0, 0, 1 << 31)
    raw = request.args.get(limit_name)
    if raw in (None, ""):
        return Window(marker, default)
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidParameter(_limit_rule(limit_name, default, maximum)) from None
    if not 0 <= limit <= 1 << 31:
        raise InvalidParameter(_limit_rule(limit_name, default, maximum))
    return Window(marker, min(limit, maximum) if limit else default)


def _limit_rule(name: str, default: int, maximum: int) -> str:
    return f"{name} must be an integer from 0 to {1 << 31} (none or 0 means {default}; over {maximum} means {maximum})"


def paged(items: list, key: str, at: Window) -> dict[str, Any]:
    """One page of `items` with FunctionGraph's `page_info` and the total `count`.

    next_marker is where the next page starts, 0 once there is none (as in `page`);
    previous_marker is where this one started."""
    chunk = items[at.marker : at.marker + at.limit]
    end = at.marker + len(chunk)
    return {
        key: chunk,
        "page_info": {
            "next_marker": end if end < len(items) else 0,
            "previous_marker": at.marker,
            "current_count": len(chunk),
        },
        "count": len(items),
    }


# Route declarations ------------------------------------------------------------------------
#
# Every route is declared once, with `route`: the declaration registers the Quart handler and
# is what fgd.web.openapi turns into the OpenAPI document, so the document cannot miss a route
# or describe an answer the handler does not give.

OPERATIONS_KEY = "fgd.operations"


@dataclass(frozen=True, kw_only=True)
class Partial:
    """A request body that may hold any subset of `struct`'s fields (fields left out keep their value)."""

    struct: type[msgspec.Struct]


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One route of the API as the OpenAPI document describes it."""

    method: str
    # A Quart rule: `/v2/<project_id>/fgs/functions/<urn>/config`, `<int:number>` for an integer.
    path: str
    name: str
    summary: str
    tag: str
    # The JSON request body: a Struct, a Partial, `Any` (any JSON value), or None (no body).
    body: Any = None
    # The body may be left out (empty).
    body_optional: bool = False
    # The body may also be a raw zip (Content-Type: application/zip), streamed by fgd.web.front;
    # its other arguments then come as these query parameters.
    raw_zip: type[msgspec.Struct] | None = None
    # The success answer: a type msgspec describes (a Struct, list[...], Any), None for no body,
    # `bytes` for a binary body of `content_type`, `str` for text.
    answer: Any = None
    status: int = 200
    content_type: str = "application/json"
    # Other answers than errors: {status: type} (e.g. /healthz's 503 carries the same report).
    alternatives: dict[int, Any] | None = None
    # Further content types of the success answer: {media type: type}.
    variants: dict[str, Any] | None = None
    query: type[msgspec.Struct] | None = None
    # Request headers the route reads: a Struct whose field names are the header names with
    # '-' written '_'.
    headers: type[msgspec.Struct] | None = None
    # Headers of the success answer, the same way (required: those without a default).
    answer_headers: type[msgspec.Struct] | None = None
    # FunctionGraph error statuses the route gives beyond those its shape implies (fgd.web.openapi
    # adds 401 for authenticated routes, 400 for any argument, 404 for a {urn} or other id, 413
    # for a body).
    errors: tuple[int, ...] = ()
    auth: bool = True


def operations(app: Any) -> list[Operation]:
    """The operations declared on `app` so far, in declaration order."""
    return app.extensions.setdefault(OPERATIONS_KEY, [])


def declare(method: str, path: str, handler: Callable[..., Any], tag: str, **fields: Any) -> Operation:
    summary = (handler.__doc__ or handler.__name__.replace("_", " ")).strip().splitlines()[0]
    return Operation(method=method, path=path, name=handler.__name__, summary=summary, tag=tag, **fields)


def route(app: Any, method: str, path: str, **fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated handler for `method path` and declare it for the OpenAPI document.

    The handler returns a Response, or its answer: the declared type, or plain data (dicts,
    lists) of that shape, which is converted to it (fields the type lacks are left out) and
    encoded as JSON with the declared status. An answer that does not fit the declared type is
    a programming error: it is refused (a 500 and a log line), never sent undocumented.
    """

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        tag = handler.__module__.rsplit(".", 1)[-1]
        operation = declare(method, path, handler, tag, **fields)
        answer = operation.answer
        # None (no body), Any (the function's own result), bytes and text go as they are.
        checked = answer not in (None, Any, bytes, str)

        @functools.wraps(handler)
        async def view(**kwargs: Any) -> Any:
            result = await handler(**kwargs)
            if isinstance(result, Response):
                return result
            if checked:
                try:
                    result = msgspec.convert(result, answer)
                except msgspec.ValidationError as exc:
                    raise TypeError(f"{operation.name}'s answer does not fit {answer}: {exc}") from None
            return json_response(result, operation.status)

        app.add_url_rule(path, endpoint=operation.name, view_func=view, methods=[method])
        operations(app).append(operation)
        return view

    return decorate


def path_regex(rule: str) -> re.Pattern[str]:
    """A Quart rule as a regular expression with one group per argument (for fgd.web.front)."""
    pattern = re.sub(r"<(?:[a-z]+:)?[A-Za-z_]+>", "([^/]+)", re.escape(rule))
    return re.compile(f"^{pattern}\\Z")
