"""FunctionGraph's metrics and quota routes, answered from fgd's own counters and limits.

The series come from `fgd.history` (per-minute buckets of the last 24 h, in memory: they
start empty when the daemon starts). Each point is `{"timestamp": <ms of its start>,
"value": v}`; a duration where nothing ran is -1, FunctionGraph's "no data".
"""

from __future__ import annotations

import math
import time
import typing

from quart import request
from quart_trio import QuartTrio

from fgd.errors import InvalidParameter
from fgd.history import SERIES, step_for
from fgd.model import MaxInstances
from fgd.web.api.answers import Quotas, Series, StatisticsQuery, TenantStatistics
from fgd.web.api.common import BASE, ApiContext, int_arg, route

# ListStatistics and ShowFunctionMetrics (slareports): `period` is the width of one point.
STEPS = (1, 5, 15, 60)
# A step-based answer covers this many points, within the history kept.
POINTS = 60
# ListStatistics' monthly `option`: how many months back the answer starts, and how many it has.
MONTHS = {"0": (0, 1), "1": (1, 1), "2": (2, 3), "3": (5, 6)}
# The per-function cap of max instances and of reserved instances (the model's bound).
INSTANCES_CAP = typing.get_args(MaxInstances)[1].le
# ListFunctionStatistics has every series but instance_num.
FUNCTION_SERIES = tuple(name for name in SERIES if name != "instance_num")


def minutes_arg(period: str, low: int, high: int) -> int:
    # Length first: int() refuses (ValueError) a string of over 4,300 digits.
    if not (len(period) <= 9 and period.isascii() and period.isdigit()) or not low <= int(period) <= high:
        raise InvalidParameter(f"period must be a whole number of minutes from {low} to {high}, not {period[:64]!r}")
    return int(period)


def step_arg(period: str) -> int:
    if period not in {str(s) for s in STEPS}:
        raise InvalidParameter(
            f"period must be the minutes of one point: {', '.join(map(str, STEPS))}; not {period[:64]!r}"
        )
    return int(period)


def register(app: QuartTrio, ctx: ApiContext) -> None:
    history = ctx.metrics.history

    def report(keys: list, minutes: int, step: int) -> dict[str, list[dict]]:
        ctx.metrics.prune()  # a new function of a deleted one's name starts from nothing
        return history.report(keys, time.time(), minutes, step)

    def step_window(step: int) -> int:
        return min(POINTS * step, history.minutes)

    @route(app, "GET", f"{BASE}/functions/statistics", query=StatisticsQuery, answer=TenantStatistics)
    async def tenant_statistics(project_id: str) -> TenantStatistics:
        # ListStatistics. monitor_data: every function of the project together, one point per
        # `period` minutes (default 5); monthly_report: invocations and GB-seconds per month,
        # counted since the daemon started. `limit` and `marker` are checked, and have nothing
        # to page (the answers are short).
        kind = request.args.get("filter") or "monitor_data"
        int_arg("limit", 100, 0, 500)
        int_arg("marker", 0, 0, 1 << 31)
        if kind == "monitor_data":
            step = step_arg(request.args.get("period") or "5")
            keys = [r.key for r in ctx.store.list(project_id)]
            return TenantStatistics(statistics=report(keys, step_window(step), step))
        if kind != "monthly_report":
            raise InvalidParameter(f"filter must be monitor_data or monthly_report, not {kind[:64]!r}")
        # FunctionGraph: an option out of range counts as "0" (this month).
        back, keep = MONTHS.get(request.args.get("option") or "0", MONTHS["0"])
        months = history.months(project_id, time.time(), back)[:keep]
        return {
            "count": [{"date": month, "value": count} for month, count, _ in months],
            "gbs": [{"date": month, "value": round(gbs, 6)} for month, _, gbs in months],
            "gpu_gbs": [{"date": month, "value": 0} for month, _, _ in months],
        }

    @route(app, "GET", f"{BASE}/functions/<urn>/statistics/<period>", answer=Series)
    async def function_statistics(project_id: str, urn: str, period: str) -> Series:
        # ListFunctionStatistics: the last `period` minutes (1 to the 24 h kept), in points of
        # 1, 5, 15 or 60 minutes (60 points at most).
        record = ctx.lookup(project_id, urn)
        minutes = minutes_arg(period, 1, history.minutes)
        series = report([record.key], minutes, step_for(minutes))
        return {name: series[name] for name in FUNCTION_SERIES}

    @route(app, "GET", f"{BASE}/functions/<urn>/slareports/<period>", answer=Series)
    async def function_sla_report(project_id: str, urn: str, period: str) -> Series:
        # ShowFunctionMetrics: one point per `period` minutes over the last 60 of them (24 h at most).
        record = ctx.lookup(project_id, urn)
        step = step_arg(period)
        return report([record.key], step_window(step), step)

    @route(app, "GET", f"{BASE}/quotas", answer=Quotas)
    async def quotas(project_id: str) -> Quotas:
        # ListQuotas. fgd's limits on max and reserved instances are per function: `used` is
        # the highest value one function has. -1: no limit on this node.
        records = ctx.store.list(project_id)
        code_bytes = sum(r.code.size for r in records)
        resources = [
            {"type": "fgs_func_num", "quota": -1, "used": len(records), "unit": ""},
            {"type": "fgs_func_code_size", "quota": -1, "used": math.ceil(code_bytes / 2**20), "unit": "MB"},
            {
                "type": "fgs_on_demand_instance_limit",
                "quota": INSTANCES_CAP,
                "used": max((max(0, r.settings.strategy_config.concurrency) for r in records), default=0),
                "unit": "",
            },
            {
                "type": "fgs_func_occurs",
                "quota": INSTANCES_CAP,
                "used": max((r.reserved for r in records), default=0),
                "unit": "",
            },
            {
                "type": "fgs_func_scale_down_timeout",
                "quota": int(ctx.config.instances.idle_keepalive),
                "used": 0,
                "unit": "s",
            },
        ]
        return {"quotas": {"resources": resources}}
