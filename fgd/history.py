"""Invocations per function and minute, for FunctionGraph's statistics and SLA report routes.

The Prometheus counters of `fgd.metrics` only grow; FunctionGraph's reports are time series
("invocations per minute over the last hour"), so each function also gets one-minute
buckets. They live in memory only: a restarted daemon starts with an empty history. Bounded:
a function keeps its last `minutes` buckets (24 h), and the node keeps at most `max_buckets`
of them in all (past that the oldest minutes, of any function, go first). A bucket exists only
for a minute with activity, and costs about 200 bytes: 200,000 buckets are about 40 MB.

Pure logic: the caller passes the time, so tests drive days of history in milliseconds.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

Key = tuple[str, str, str]
HISTORY_MINUTES = 24 * 60
MAX_BUCKETS = 200_000
# Kept months of totals per project (FunctionGraph's monthly report reaches back six months).
MONTHS_KEPT = 6
# What FunctionGraph reports for a time slot in which a value does not exist (no invocation,
# so no duration).
NO_DATA = -1.0


class Bucket:
    """What happened to one function in one minute."""

    __slots__ = (
        "concurrency",
        "count",
        "duration_max",
        "duration_min",
        "duration_total",
        "function_errors",
        "instances",
        "minute",
        "rejects",
        "reserved",
        "system_errors",
    )

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.count = 0
        self.function_errors = 0
        self.system_errors = 0
        self.rejects = 0
        self.duration_total = 0.0
        self.duration_max = 0.0
        self.duration_min = math.inf
        # Peaks sampled as invocations end: invocations running, instances, reserved instances.
        self.concurrency = 0
        self.instances = 0
        self.reserved = 0


@dataclass(frozen=True)
class Sample:
    """The function's instances as one of its invocations ended."""

    running: int = 0
    instances: int = 0
    reserved: int = 0


# The series of FunctionGraph's statistics and SLA report answers, in their field names.
SERIES = (
    "count",
    "duration",
    "fail_count",
    "max_duration",
    "min_duration",
    "reject_count",
    "function_error_count",
    "system_error_count",
    "reserved_instance_num",
    "concurrency_num",
    "instance_num",
)


def step_for(minutes: int) -> int:
    """The width of one point (1, 5, 15 or 60 minutes) so a window has 60 points at most."""
    for step in (1, 5, 15, 60):
        if minutes <= 60 * step:
            return step
    return 60


class History:
    def __init__(self, minutes: int = HISTORY_MINUTES, max_buckets: int = MAX_BUCKETS) -> None:
        self.minutes = minutes
        self.max_buckets = max_buckets
        self._series: dict[Key, deque[Bucket]] = {}
        self._total = 0
        # (project, "YYYY-MM") -> [invocations, GB-seconds], since the daemon started.
        self._months: dict[tuple[str, str], list[float]] = {}
        # The month's name, computed once a minute (strftime is most of an invocation's cost here).
        self._month_of: tuple[int, str] = (-1, "")

    @property
    def buckets(self) -> int:
        return self._total

    def _bucket(self, key: Key, now: float) -> Bucket:
        minute = int(now // 60)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = deque()
        if series and series[-1].minute >= minute:
            # The wall clock stepped back (NTP): count into the latest bucket rather than
            # break the order the window reads rely on.
            return series[-1]
        bucket = Bucket(minute)
        series.append(bucket)
        self._total += 1
        while series and series[0].minute <= minute - self.minutes:
            series.popleft()
            self._total -= 1
        if self._total > self.max_buckets:
            self._shed()
        return bucket

    def _shed(self) -> None:
        """Drop the node's oldest minutes until a tenth of the budget is free again."""
        target = self.max_buckets * 9 // 10
        while self._total > target:
            oldest = min(series[0].minute for series in self._series.values() if series)
            for key, series in list(self._series.items()):
                while series and series[0].minute <= oldest:
                    series.popleft()
                    self._total -= 1
                if not series:
                    del self._series[key]

    def invoked(
        self,
        key: Key,
        now: float,
        duration_ms: float,
        *,
        function_error: bool,
        gb_seconds: float,
        sample: Sample,
    ) -> None:
        bucket = self._bucket(key, now)
        bucket.duration_min = min(bucket.duration_min, duration_ms)
        bucket.duration_max = max(bucket.duration_max, duration_ms)
        bucket.count += 1
        bucket.duration_total += duration_ms
        bucket.function_errors += function_error
        bucket.concurrency = max(bucket.concurrency, sample.running)
        bucket.instances = max(bucket.instances, sample.instances)
        bucket.reserved = max(bucket.reserved, sample.reserved)
        self._add_month(key[0], now, 1, gb_seconds)

    def system_error(self, key: Key, now: float) -> None:
        """An invocation fgd failed itself (an internal error), not the function: counted, not timed."""
        bucket = self._bucket(key, now)
        bucket.count += 1
        bucket.system_errors += 1
        self._add_month(key[0], now, 1, 0.0)

    def refused(self, key: Key, now: float) -> None:
        self._bucket(key, now).rejects += 1

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            series = self._series.pop(key, None)
            if series is not None:
                self._total -= len(series)

    def _add_month(self, project: str, now: float, count: int, gb_seconds: float) -> None:
        minute = int(now // 60)
        if self._month_of[0] != minute:
            self._month_of = (minute, time.strftime("%Y-%m", time.gmtime(now)))
        month = self._month_of[1]
        totals = self._months.get((project, month))
        if totals is None:
            totals = self._months[project, month] = [0, 0.0]
            kept = sorted({m for _, m in self._months}, reverse=True)[:MONTHS_KEPT]
            for stale in [k for k in self._months if k[1] not in kept]:
                del self._months[stale]
        totals[0] += count
        totals[1] += gb_seconds

    def months(self, project: str, now: float, back: int) -> list[tuple[str, float, float]]:
        """(month, invocations, GB-seconds) of this month and the `back` before it, oldest first."""
        year, month = time.gmtime(now)[:2]
        out = []
        for offset in range(back, -1, -1):
            y, m = divmod(year * 12 + month - 1 - offset, 12)
            name = f"{y:04d}-{m + 1:02d}"
            count, gbs = self._months.get((project, name), (0, 0.0))
            out.append((name, count, gbs))
        return out

    def report(self, keys: Iterable[Key], now: float, minutes: int, step: int) -> dict[str, list[dict]]:
        """The last `minutes` minutes of the functions `keys` together, one point per `step`
        minutes (aligned to the clock), each `{"timestamp": <ms of its start>, "value": v}`."""
        last = int(now // 60)
        first = last - minutes + 1
        start = first // step * step
        slots = (last - start) // step + 1
        totals = [Bucket(start + i * step) for i in range(slots)]
        for key in keys:
            for bucket in reversed(self._series.get(key, ())):
                if bucket.minute < first:
                    break
                if bucket.minute > last:
                    continue
                into = totals[(bucket.minute - start) // step]
                into.duration_min = min(into.duration_min, bucket.duration_min)
                into.duration_max = max(into.duration_max, bucket.duration_max)
                into.count += bucket.count
                into.duration_total += bucket.duration_total
                into.function_errors += bucket.function_errors
                into.system_errors += bucket.system_errors
                into.rejects += bucket.rejects
                into.concurrency = max(into.concurrency, bucket.concurrency)
                into.instances = max(into.instances, bucket.instances)
                into.reserved = max(into.reserved, bucket.reserved)
        out: dict[str, list[dict]] = {name: [] for name in SERIES}
        for b in totals:
            timed = b.count - b.system_errors
            ran = timed > 0
            values = (
                b.count,
                round(b.duration_total / timed, 3) if ran else NO_DATA,
                b.function_errors + b.system_errors,
                round(b.duration_max, 3) if ran else NO_DATA,
                round(b.duration_min, 3) if ran else NO_DATA,
                b.rejects,
                b.function_errors,
                b.system_errors,
                b.reserved,
                b.concurrency,
                b.instances,
            )
            stamp = b.minute * 60_000
            for name, value in zip(SERIES, values, strict=True):
                out[name].append({"timestamp": stamp, "value": value})
        return out
