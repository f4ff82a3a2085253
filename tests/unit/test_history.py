"""The per-minute invocation history behind the statistics routes (pure: the time is passed in)."""

from __future__ import annotations

from fgd.history import NO_DATA, History, Sample, step_for

KEY = ("p", "default", "f")
OTHER = ("p", "default", "g")
T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def invoke(history: History, at: float, ms: float, *, error: bool = False, key=KEY, running: int = 1) -> None:
    history.invoked(key, at, ms, function_error=error, gb_seconds=0.5, sample=Sample(running, running, 0))


def values(report: dict, name: str) -> list[float]:
    return [point["value"] for point in report[name]]


def test_report_counts_errors_and_durations_per_minute() -> None:
    history = History()
    invoke(history, T0 + 1, 10)
    invoke(history, T0 + 2, 30, error=True)
    history.refused(KEY, T0 + 3)
    invoke(history, T0 + 125, 5)  # two minutes later
    report = history.report([KEY], T0 + 130, 3, 1)
    assert [p["timestamp"] for p in report["count"]] == [
        int(T0 * 1000),
        int(T0 * 1000) + 60_000,
        int(T0 * 1000) + 120_000,
    ]
    assert values(report, "count") == [2, 0, 1]
    assert values(report, "duration") == [20.0, NO_DATA, 5.0]
    assert values(report, "max_duration") == [30.0, NO_DATA, 5.0]
    assert values(report, "min_duration") == [10.0, NO_DATA, 5.0]
    assert values(report, "fail_count") == [1, 0, 0]
    assert values(report, "function_error_count") == [1, 0, 0]
    assert values(report, "reject_count") == [1, 0, 0]


def test_points_of_several_minutes_and_functions_add_up() -> None:
    history = History()
    for minute in range(10):
        invoke(history, T0 + minute * 60, 1, running=minute)
        invoke(history, T0 + minute * 60, 3, key=OTHER)
    report = history.report([KEY, OTHER], T0 + 9 * 60, 10, 5)
    assert values(report, "count") == [10, 10]
    assert values(report, "duration") == [2.0, 2.0]
    assert values(report, "concurrency_num") == [4, 9]  # the peak within each point


def test_system_errors_are_counted_not_timed() -> None:
    history = History()
    history.system_error(KEY, T0)
    report = history.report([KEY], T0, 1, 1)
    assert values(report, "count") == [1]
    assert values(report, "system_error_count") == [1]
    assert values(report, "fail_count") == [1]
    assert values(report, "duration") == [NO_DATA]


def test_history_keeps_its_last_minutes_only() -> None:
    history = History(minutes=60)
    for minute in range(200):
        invoke(history, T0 + minute * 60, 1)
    assert history.buckets == 60
    assert sum(values(history.report([KEY], T0 + 199 * 60, 60, 1), "count")) == 60


def test_node_wide_cap_drops_the_oldest_minutes_first() -> None:
    history = History(max_buckets=100)
    for minute in range(80):
        invoke(history, T0 + minute * 60, 1, key=KEY)
        invoke(history, T0 + minute * 60, 1, key=OTHER)
    assert history.buckets <= 100
    latest = history.report([KEY, OTHER], T0 + 79 * 60, 1, 1)
    assert values(latest, "count") == [2]


def test_clock_stepping_back_counts_into_the_latest_minute() -> None:
    history = History()
    invoke(history, T0 + 120, 1)
    invoke(history, T0, 1)  # NTP stepped the clock back two minutes
    assert history.buckets == 1
    assert values(history.report([KEY], T0 + 120, 1, 1), "count") == [2]


def test_forgotten_function_has_no_history() -> None:
    history = History()
    invoke(history, T0, 1)
    history.forget([KEY])
    assert history.buckets == 0
    assert values(history.report([KEY], T0, 1, 1), "count") == [0]


def test_months_count_invocations_and_gb_seconds() -> None:
    history = History()
    invoke(history, T0, 1)
    invoke(history, T0, 1)
    months = history.months("p", T0, 2)
    assert [m[0] for m in months] == ["2026-11", "2026-12", "2027-01"]
    assert months[-1][1:] == (2, 1.0)
    assert months[0][1:] == (0, 0.0)
    assert history.months("other", T0, 0)[0][1:] == (0, 0.0)


def test_step_keeps_a_window_to_sixty_points() -> None:
    assert [step_for(m) for m in (1, 60, 61, 300, 301, 900, 901, 1440)] == [1, 1, 5, 5, 15, 15, 60, 60]
