"""What every resource module of the management API shares: its context, JSON in and out, arguments."""

from __future__ import annotations

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
from fgd.model import FunctionRecord, check_project, parse_function_ref
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
        check_project(project_id)
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
