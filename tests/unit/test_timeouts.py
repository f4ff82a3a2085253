"""fgd.timeouts: the daemon's one task that keeps every invocation's deadline."""

from __future__ import annotations

import logging
import math

import pytest
import trio
import trio.testing

from fgd.timeouts import REBUILD_ABOVE, Timeouts


def recorder() -> tuple[Timeouts, list[object]]:
    fired: list[object] = []
    return Timeouts(fired.append), fired


def test_deadlines_fire_in_order_once_due_and_never_after_they_finished() -> None:
    timeouts, fired = recorder()
    late = timeouts.watch(30.0, "late")
    early = timeouts.watch(10.0, "early")
    done = timeouts.watch(5.0, "done in time")
    assert timeouts.finished(done) is False
    assert timeouts.expire(4.0) == 10.0
    assert fired == []
    assert timeouts.expire(10.0) == 30.0
    assert fired == ["early"]
    assert timeouts.finished(early) is True  # the invocation learns it had timed out
    assert timeouts.expire(100.0) == math.inf
    assert fired == ["early", "late"]
    assert timeouts.finished(late) is True and timeouts.live == 0
    # Finishing twice changes nothing.
    assert timeouts.finished(done) is False and timeouts.live == 0


def test_ended_entries_do_not_pile_up_behind_a_long_one() -> None:
    # One invocation with a long timeout stays; a great many short ones start and end around it.
    # Their entries sit below the long one in the heap until it is rebuilt: never more than
    # twice the live ones (or REBUILD_ABOVE).
    timeouts, fired = recorder()
    timeouts.watch(86_400.0, "long")
    largest = 0
    for i in range(20_000):
        entry = timeouts.watch(100_000.0 + i, i)
        largest = max(largest, len(timeouts))
        timeouts.finished(entry)
    assert largest <= REBUILD_ABOVE + 1
    assert timeouts.live == 1 and fired == []
    assert timeouts.expire(86_400.0) == math.inf and fired == ["long"]
    assert len(timeouts) == 0


def test_a_failing_expiry_is_logged_and_the_other_deadlines_still_fire(caplog: pytest.LogCaptureFixture) -> None:
    fired: list[object] = []

    def on_expiry(subject: object) -> None:
        if subject == "broken":
            raise RuntimeError("clean-up failed")
        fired.append(subject)

    timeouts = Timeouts(on_expiry)
    for at, subject in ((1.0, "first"), (2.0, "broken"), (3.0, "third")):
        timeouts.watch(at, subject)
    with caplog.at_level(logging.ERROR, logger="fgd.timeouts"):
        assert timeouts.expire(5.0) == math.inf
    assert fired == ["first", "third"]
    assert "ending an invocation at its timeout failed" in caplog.text
    assert timeouts.live == 0


async def test_the_task_fires_each_deadline_on_time_even_one_earlier_than_it_sleeps_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    timeouts = Timeouts(lambda subject: fired.append((subject, trio.current_time())))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timeouts.run)
        await trio.testing.wait_all_tasks_blocked()
        assert timeouts.running
        start = trio.current_time()
        timeouts.watch(start + 60, "a minute")
        await trio.sleep(1)
        # The task now sleeps until the minute; a deadline before it must wake it.
        timeouts.watch(start + 5, "five seconds")
        finished_in_time = timeouts.watch(start + 3, "finished in time")
        await trio.sleep(1)
        assert timeouts.finished(finished_in_time) is False
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert not timeouts.running
    assert [(name, round(at - start, 6)) for name, at in fired] == [("five seconds", 5.0), ("a minute", 60.0)]
