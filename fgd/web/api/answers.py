"""The API layer's own Structs: answers the routes build (list wrappers, rows, small reports),
the few request bodies parsed by hand, and the query parameters and headers routes read.

The resource Structs themselves and FunctionGraph's answer shapes (FunctionConfig, FunctionList,
DependencyInfo, AsyncInvocationList, the request bodies CreateFunction, UpdateCode, ...) live in
fgd.model (keys in fgd.keys) and are referred to by name. Each Struct here
is both what a handler answers and what fgd.web.openapi describes: one definition per shape.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from fgd.asyncqueue import Status
from fgd.keys import DESCRIPTION_MAX, KeyInfo
from fgd.model import PACKAGE_RE, AsyncConfigAnswer, DependencyName, Description, FunctionConfig, TacticsConfig
from fgd.store import LogLine
from fgd.web.api.common import LIST_MAX_ITEMS

MARKER_MAX = 1 << 31

# Answers -------------------------------------------------------------------------------------


class RuntimeServer(msgspec.Struct, kw_only=True):
    """The interpreter serving a runtime name; exact: its minor version is the name's."""

    path: str
    version: str
    exact: bool


class InterpreterInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A Python interpreter the node found, whether it is usable (and why not), and the names it serves."""

    path: str
    version: str
    origin: str
    usable: bool
    reason: str = ""
    serves: list[str]


class Runtimes(msgspec.Struct, kw_only=True):
    """The runtimes this node offers (Python3.x names) and the interpreters behind them."""

    runtimes: list[str]
    served_by: dict[str, RuntimeServer]
    exact_versions: bool
    interpreters: list[InterpreterInfo]


class PageInfo(msgspec.Struct, kw_only=True):
    """Where the next page starts (0: there is none) and where this one started."""

    next_marker: int
    previous_marker: int
    current_count: int


class FunctionVersion(FunctionConfig, kw_only=True, frozen=True):
    """A published version (FunctionGraph's version model): its config, and the version's own."""

    version_description: str
    concurrency: int
    concurrent_num: int
    function_async_config: AsyncConfigAnswer


class FunctionVersionList(msgspec.Struct, kw_only=True):
    """latest and the published versions; `next_marker` is 0 on the last page."""

    versions: list[FunctionVersion]
    next_marker: int
    count: int


class ReservedInstance(msgspec.Struct, kw_only=True):
    func_urn: str
    count: int
    qualifier_type: str
    qualifier_name: str
    min_count: int
    # Reserved instances started and alive now.
    running: int


class ReservedInstanceList(msgspec.Struct, kw_only=True):
    """The functions of a project that keep reserved instances (or the one asked for)."""

    reservedinstances: list[ReservedInstance]
    page_info: PageInfo
    count: int


class ReservedInstanceConfig(msgspec.Struct, kw_only=True):
    function_urn: str
    qualifier_type: str
    qualifier_name: str
    min_count: int
    idle_mode: bool
    tactics_config: TacticsConfig


class ReservedInstanceConfigList(msgspec.Struct, kw_only=True):
    reserved_instances: list[ReservedInstanceConfig]
    page_info: PageInfo
    count: int


class AsyncInvokeConfigList(msgspec.Struct, kw_only=True):
    """A function's asynchronous invocation settings, if set (fgd functions have one version)."""

    async_invoke_configs: list[AsyncConfigAnswer]
    page_info: PageInfo
    count: int


class StatisticPoint(msgspec.Struct, kw_only=True):
    # Milliseconds since the epoch of the start of the point's minutes.
    timestamp: int
    # -1: no data (a duration where nothing ran).
    value: int | float


# Series by name (count, duration, fail_count, max_duration, ...): ListFunctionStatistics,
# ShowFunctionMetrics, ListStatistics' monitor_data.
Series = dict[str, list[StatisticPoint]]


class MonthValue(msgspec.Struct, kw_only=True):
    date: str
    value: int | float


class TenantStatistics(msgspec.Struct, kw_only=True, omit_defaults=True):
    """ListStatistics: `statistics` with filter=monitor_data, the monthly lists with monthly_report."""

    statistics: Series | None = None
    count: list[MonthValue] | None = None
    gbs: list[MonthValue] | None = None
    gpu_gbs: list[MonthValue] | None = None


class QuotaResource(msgspec.Struct, kw_only=True):
    type: str
    # -1: no limit on this node.
    quota: int
    used: int
    unit: str


class QuotaResources(msgspec.Struct, kw_only=True):
    resources: list[QuotaResource]


class Quotas(msgspec.Struct, kw_only=True):
    quotas: QuotaResources


class AsyncAccepted(msgspec.Struct, kw_only=True):
    """An asynchronous invocation is queued (durably): it will run at least once."""

    request_id: str


class Cancelled(msgspec.Struct, kw_only=True):
    request_id: str
    status: Literal["DISCARD"]


class LogLines(msgspec.Struct, kw_only=True):
    logs: list[LogLine]
    count: int


class KeyList(msgspec.Struct, kw_only=True):
    """A project's access keys, never their secrets."""

    keys: list[KeyInfo]
    count: int


ZygoteState = Literal["not started", "starting", "ready", "restarting"]


class InterpreterHealth(msgspec.Struct, kw_only=True):
    path: str
    version: str
    zygote: ZygoteState
    # None until its zygote is first started.
    pid: int | None


class NetworkHealth(msgspec.Struct, kw_only=True):
    """Issue 14 (fgd.network): whether functions can have `outbound` here, and why not."""

    available: bool
    detail: str
    # The mode a new function gets when it does not say.
    default_mode: Literal["none", "outbound"]
    subnet: str
    # Instances holding an interface now.
    interfaces: int
    resolvers: list[str]


class Health(msgspec.Struct, kw_only=True):
    """The daemon's health: "ok" once every runtime's zygote runs (200), "starting" while one
    (re)starts (503)."""

    status: Literal["ok", "starting"]
    # Sandbox protections this host lacks or that are switched off, each with its reason.
    degraded: list[str]
    version: str
    # Per runtime name: its interpreter's zygote.
    runtimes: dict[str, ZygoteState]
    interpreters: list[InterpreterHealth]
    instances: int
    pool: dict[str, int]
    functions: int
    network: NetworkHealth
    # Issue 15: the steps of the last cold start in ms, as the daemon ("daemon") and the instance
    # ("instance") timed them; empty before the first one.
    last_cold_start: dict[str, dict[str, float]] = {}


# Request bodies parsed by hand -----------------------------------------------------------------


class MaxInstanceBody(msgspec.Struct, kw_only=True):
    """Body of `PUT .../config-max-instance`: -1 (no limit), 0 (refuse every request) or 1-1000."""

    max_instance_num: Annotated[int, Meta(ge=-1, le=1000)]


class KeyDescription(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /fgd/keys` (optional): what the key is for."""

    description: Annotated[str, Meta(max_length=DESCRIPTION_MAX)] = ""


class CancelBody(msgspec.Struct, kw_only=True):
    """Body of `POST .../cancel`: a waiting (WAIT) asynchronous invocation."""

    request_id: Annotated[str, Meta(min_length=1)]


# Query parameters ------------------------------------------------------------------------------


class PageQuery(msgspec.Struct, kw_only=True):
    marker: Annotated[int, Meta(ge=0, le=MARKER_MAX)] = 0
    maxitems: Annotated[int, Meta(ge=1, le=LIST_MAX_ITEMS)] = LIST_MAX_ITEMS


class FunctionListQuery(msgspec.Struct, kw_only=True):
    # A part of a function name (any case).
    func_name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,60}\Z")] | None = None
    package_name: Annotated[str, Meta(pattern=PACKAGE_RE)] | None = None
    marker: Annotated[int, Meta(ge=0, le=MARKER_MAX)] = 0
    # None, 0 or over 400 means 400.
    maxitems: Annotated[int, Meta(ge=0, le=MARKER_MAX)] = LIST_MAX_ITEMS


class LimitQuery(msgspec.Struct, kw_only=True):
    """FunctionGraph's newer lists: none or 0 means the default page size, more than the most means the most."""

    marker: Annotated[int, Meta(ge=0, le=MARKER_MAX)] = 0
    limit: Annotated[int, Meta(ge=0, le=MARKER_MAX)] = 0


class ReservedQuery(LimitQuery, kw_only=True):
    # One function (even one with none reserved) instead of every one with reserved instances.
    urn: str = ""


class ReservedConfigsQuery(LimitQuery, kw_only=True):
    function_urn: str = ""


class StatisticsQuery(msgspec.Struct, kw_only=True):
    filter: Literal["monitor_data", "monthly_report"] = "monitor_data"
    # Minutes of one point (monitor_data).
    period: Literal["1", "5", "15", "60"] = "5"
    # Months back (monthly_report): 0 this month, 1 last month, 2 the last three, 3 the last six.
    option: Literal["0", "1", "2", "3"] = "0"
    limit: Annotated[int, Meta(ge=0, le=500)] = 100
    marker: Annotated[int, Meta(ge=0, le=MARKER_MAX)] = 0


class DependencyQuery(PageQuery, kw_only=True):
    name: str = ""
    runtime: str = ""
    owner: str = ""


class ExportQuery(msgspec.Struct, kw_only=True):
    """What to export: the code zip (default), a zip of config.json (and code.zip), or both."""

    code: bool = True
    config: bool = False


class AsyncInvocationsQuery(msgspec.Struct, kw_only=True):
    request_id: str = ""
    status: Status | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class LogsQuery(msgspec.Struct, kw_only=True):
    request_id: str = ""
    # A Unix time in seconds: lines from then on.
    since: float | None = None
    limit: Annotated[int, Meta(ge=1, le=10000)] = 100
    # Stream newline-delimited JSON lines as they arrive (up to an hour per request).
    follow: bool = False


class RawCodeQuery(msgspec.Struct, kw_only=True):
    """Arguments of a raw zip code upload (`PUT .../code`, Content-Type: application/zip)."""

    code_filename: Annotated[str, Meta(max_length=128)] = ""


class RawDependencyQuery(msgspec.Struct, kw_only=True):
    """Arguments of a raw zip dependency upload (`POST /dependencies/version`, Content-Type: application/zip)."""

    name: DependencyName
    runtime: str
    description: Description = ""


# Request headers -------------------------------------------------------------------------------


class InvokeHeaders(
    msgspec.Struct,
    kw_only=True,
    rename={
        "log_type": "X-Cff-Log-Type",
        "request_version": "X-Cff-Request-Version",
        "instance_memory": "X-Cff-Instance-Memory",
    },
):
    # "Tail" (any case): X-Cff-Function-Log holds base64 of the invocation's last log bytes.
    log_type: Literal["None", "Tail"] = "None"
    # "v1": the answer is {request_id, result, log, status} with the result as a string.
    request_version: Literal["v0", "v1"] = "v0"
    # The instance memory for this request in MB (needs enable_dynamic_memory).
    instance_memory: Annotated[int, Meta(ge=64, le=10240)] | None = None


class InvokeAnswerHeaders(
    msgspec.Struct,
    kw_only=True,
    rename={
        "request_id": "X-Cff-Request-Id",
        "summary": "X-Cff-Invoke-Summary",
        "is_func_err": "X-Is-Func-Err",
        "func_err_code": "X-Func-Err-Code",
        "function_log": "X-Cff-Function-Log",
    },
):
    request_id: str
    # JSON: {duration, billingDuration, memorySize, memoryUsed, coldStart[, initDuration]}.
    summary: str
    # "true" when the function raised (or timed out, or its instance died): the body is its error.
    is_func_err: Literal["true", "false"]
    # The function's error type, when it failed.
    func_err_code: str = ""
    # With X-Cff-Log-Type: Tail, base64 of the invocation's last log bytes.
    function_log: str = ""


class AsyncAnswerHeaders(msgspec.Struct, kw_only=True, rename={"request_id": "X-Cff-Request-Id"}):
    # The queued invocation's id, as on a synchronous invocation.
    request_id: str
