"""Timer schedules in FunctionGraph's dialect, as pure functions of time.

Rate: `3m` (minutes 1-60), `1h` (hours 1-24), `2d` (days 1-30).
Cron: six fields with seconds first (`0 30 8 * * MON-FRI`); day-of-week may be
left out (five fields); `?` in day-of-month or day-of-week; month and day
names; `@every 1h30m` (units ns, us, ms, s, m, h; 1 second to 30 days);
an optional `CRON_TZ=<zone> ` prefix (default: the node's zone).

A schedule is accepted only if it fires again: `0 0 0 30 2 ?` (February 30th)
is refused here, at the door, rather than failing in the timer loop later.
Every message names the field (`event_data.schedule`), as the API reports it.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from fgd.errors import InvalidParameter

_RATE = re.compile(r"^(\d+)([mhd])\Z")
_RATE_RANGES = {"m": (60, 1, 60, "minutes"), "h": (3600, 1, 24, "hours"), "d": (86400, 1, 30, "days")}
_EVERY_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
# The longest @every, as the longest Rate (30d): beyond it a typo (`@every 9999999h`) is likelier than intent.
_EVERY_MAX = 30 * 86400
_FIELD = "event_data.schedule"


class Schedule:
    """When a timer fires next."""

    def __init__(self, *, every: float | None = None, cron: str | None = None, zone: ZoneInfo | None = None) -> None:
        self._every = every
        self._cron = cron
        self.zone = zone

    def next_after(self, now: float) -> float:
        if self._every is not None:
            return now + self._every
        start = datetime.fromtimestamp(now, self.zone)
        return croniter(self._cron, start, second_at_beginning=True).get_next(float)


def parse(schedule_type: str, schedule: str, local_zone: ZoneInfo | None = None) -> Schedule:
    """The schedule, if it is well formed and fires again; InvalidParameter naming the field if not."""
    if not isinstance(schedule_type, str) or not isinstance(schedule, str):
        raise InvalidParameter(f"{_FIELD}_type and {_FIELD} must be strings")
    text = schedule.strip()
    if schedule_type == "Rate":
        match = _RATE.match(text)
        if not match:
            raise InvalidParameter(
                f"{_FIELD}: Rate schedule {schedule!r} must be a number and m, h or d (e.g. 3m, 1h, 2d)"
            )
        amount, unit = int(match[1]), match[2]
        seconds, low, high, name = _RATE_RANGES[unit]
        if not low <= amount <= high:
            raise InvalidParameter(f"{_FIELD}: Rate schedule {schedule!r}: {name} must be {low}-{high}")
        return Schedule(every=amount * seconds)
    if schedule_type != "Cron":
        raise InvalidParameter(f"{_FIELD}_type must be Rate or Cron, not {schedule_type!r}")
    zone = local_zone
    if text.startswith("CRON_TZ="):
        name, _, text = text[len("CRON_TZ=") :].partition(" ")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidParameter(f"{_FIELD}: Cron schedule {schedule!r}: unknown time zone {name!r}") from None
        text = text.strip()
    if text.startswith("@every"):
        return Schedule(every=_every(schedule, text[len("@every") :].strip()), zone=zone)
    fields = text.split()
    if len(fields) == 5:
        fields.append("?")
    if len(fields) != 6:
        raise InvalidParameter(
            f"{_FIELD}: Cron schedule {schedule!r} needs 6 fields (second minute hour day-of-month month day-of-week; "
            "the last may be left out), or @every <duration>"
        )
    expression = " ".join(fields)
    try:
        croniter(expression, second_at_beginning=True)
    except (CroniterError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise InvalidParameter(f"{_FIELD}: Cron schedule {schedule!r} is not valid: {exc}") from None
    cron = Schedule(cron=expression, zone=zone)
    try:
        # croniter looks ahead a bounded number of years, in well under a millisecond.
        cron.next_after(time.time())
    except (CroniterError, ValueError, OverflowError) as exc:
        raise InvalidParameter(
            f"{_FIELD}: Cron schedule {schedule!r} never fires (no date matches it, e.g. February 30th): {exc}"
        ) from None
    return cron


def _every(schedule: str, duration: str) -> float:
    position, total = 0, 0.0
    for match in _EVERY_PART.finditer(duration):
        if match.start() != position:
            break
        total += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()
    if not duration or position != len(duration):
        raise InvalidParameter(
            f"{_FIELD}: Cron schedule {schedule!r}: @every takes a duration such as 30s, 5m or 1h30m"
        )
    if not 1 <= total <= _EVERY_MAX:
        raise InvalidParameter(f"{_FIELD}: Cron schedule {schedule!r}: @every must be at least 1s and at most 720h")
    return total
