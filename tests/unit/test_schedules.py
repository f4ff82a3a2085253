"""FunctionGraph's timer dialect: what parses, what fires when, what is refused and why."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from fgd.errors import InvalidParameter
from fgd.schedules import parse

UTC = ZoneInfo("UTC")
T0 = datetime(2026, 11, 30, 7, 59, 58, tzinfo=UTC).timestamp()  # a Monday


def nxt(schedule_type: str, schedule: str, now: float = T0) -> datetime:
    return datetime.fromtimestamp(parse(schedule_type, schedule, UTC).next_after(now), UTC)


@pytest.mark.parametrize(
    ("schedule", "seconds"), [("1m", 60), ("60m", 3600), ("3m", 180), ("1h", 3600), ("24h", 86400), ("2d", 172800)]
)
def test_rates(schedule: str, seconds: int) -> None:
    assert parse("Rate", schedule).next_after(100.0) == 100.0 + seconds


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("0 0 8 * * *", datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)),
        ("*/10 * * * * ?", datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)),
        ("0 30 8 ? * MON-FRI", datetime(2026, 11, 30, 8, 30, 0, tzinfo=UTC)),
        ("0 0 12 ? * SAT", datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)),
        ("0 0 0 1 JAN ?", datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)),
        ("0 15 10 15 * ?", datetime(2026, 12, 15, 10, 15, 0, tzinfo=UTC)),
        ("0 0 9 * *", datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)),  # day-of-week left out
        ("CRON_TZ=Asia/Shanghai 0 0 16 * * *", datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)),
        ("CRON_TZ=America/New_York 0 0 3 * * ?", datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)),
    ],
)
def test_cron_next_fire(schedule: str, expected: datetime) -> None:
    assert nxt("Cron", schedule) == expected


@pytest.mark.parametrize(
    ("duration", "seconds"), [("1s", 1), ("90s", 90), ("1h30m", 5400), ("1.5s", 1.5), ("1500ms", 1.5)]
)
def test_every(duration: str, seconds: float) -> None:
    assert parse("Cron", f"@every {duration}").next_after(10.0) == pytest.approx(10.0 + seconds)


@pytest.mark.parametrize(
    ("schedule_type", "schedule", "words"),
    [
        ("Rate", "0m", "1-60"),
        ("Rate", "61m", "1-60"),
        ("Rate", "25h", "1-24"),
        ("Rate", "31d", "1-30"),
        ("Rate", "5s", "m, h or d"),
        ("Rate", "fast", "m, h or d"),
        ("Cron", "0 61 * * * *", "not valid"),
        ("Cron", "* * *", "6 fields"),
        ("Cron", "0 0 0 0 0 0 0 0", "6 fields"),
        ("Cron", "0 0 12 ? * FUNDAY", "not valid"),
        ("Cron", "CRON_TZ=Mars/Olympus 0 0 * * * *", "unknown time zone"),
        ("Cron", "@every", "@every takes"),
        ("Cron", "@every 10x", "@every takes"),
        ("Cron", "@every 500ms", "at least 1s"),
        ("Cron", "@every 721h", "at most 720h"),
        ("Cron", "@every " + "9" * 400 + "h", "at most 720h"),  # float('9' * 400) is inf
        ("Cron", "0 0 0 30 2 ?", "never fires"),
        ("Cron", "0 0 0 31 2 ?", "never fires"),
        ("Cron", "0 0 0 31 4,6,9,11 ?", "never fires"),
        ("Cron", "CRON_TZ=Asia/Tokyo 0 0 12 30 FEB ?", "never fires"),
        ("Cron", "0 0 0 ? * MON#6", "not valid"),
        ("Cron", "0 0 0 */0 * ?", "not valid"),
        ("Rate", "9" * 40 + "m", "1-60"),
        ("Weekly", "1", "Rate or Cron"),
    ],
)
def test_invalid_schedules_say_what_is_wrong(schedule_type: str, schedule: str, words: str) -> None:
    with pytest.raises(InvalidParameter, match=words):
        parse(schedule_type, schedule)


@pytest.mark.parametrize(("schedule_type", "schedule"), [("Cron", "0 0 0 30 2 ?"), ("Rate", "0m"), ("Cron", "* * *")])
def test_every_refusal_names_the_field(schedule_type: str, schedule: str) -> None:
    with pytest.raises(InvalidParameter, match=r"^event_data\.schedule: "):
        parse(schedule_type, schedule)


def test_leap_day_fires_in_a_leap_year() -> None:
    # Rare but real: it has a next fire time, so it is accepted.
    assert nxt("Cron", "0 0 0 29 2 ?") == datetime(2028, 2, 29, 0, 0, 0, tzinfo=UTC)
