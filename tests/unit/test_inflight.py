"""The count of requests being served, which shutdown waits on (fgd.web.front.Inflight)."""

from __future__ import annotations

import trio
import trio.testing

from fgd.web.front import Inflight


async def test_drained_waits_for_the_last_request_and_no_longer() -> None:
    inflight = Inflight()
    with trio.fail_after(1):
        await inflight.drained()  # nothing running: at once
    done: list[float] = []

    async def wait() -> None:
        await inflight.drained()
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        inflight.__enter__()
        inflight.__enter__()
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        inflight.__exit__(None, None, None)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # one request still runs
        inflight.__exit__(None, None, None)
    assert len(done) == 1
    assert inflight.count == 0
    # Requests after a drain are counted and waited for again.
    with inflight:
        with trio.move_on_after(0.05) as wait_scope:
            await inflight.drained()
        assert wait_scope.cancelled_caught
